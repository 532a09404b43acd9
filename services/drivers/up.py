"""`make up`: the local stack on the embedded defaults, running until Ctrl-C or SIGTERM, for people to try.

Builds the models first if they are missing (make up depends on make models), starts the broker, Triton on the CPU,
the SQLite store and the services, prints where everything is and what to try, writes the gateway's address and a
freshly generated API key to .run/up/ (readable by this user only; classify-image finds them there), and stops
everything it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions

UP_DIR = REPOSITORY_ROOT / ".run" / "up"


def _write_private(path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_text(text + "\n")


def main() -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    work_dir = UP_DIR / "stack"
    stack = LocalStack(StackOptions(work_dir=work_dir))
    print(f"starting the local stack (logs in {work_dir})", flush=True)
    try:
        stack.start()
        gateway = stack.services["gateway"].address
        _write_private(UP_DIR / "gateway-address", gateway)
        _write_private(UP_DIR / "gateway-api-key", stack.gateway_api_key)
        print(f"""
ready:
  gateway (gRPC, ListingClassifier)  {gateway}
  results (gRPC, ClassificationResults) {stack.services['results'].address}
  Kafka (tansu)                      {stack.broker.bootstrap_servers}
  Triton (gRPC)                      {stack.triton.grpc_url}  models: {', '.join(stack.triton.model_names)}
  result store                       {stack.database_url}
  gateway API key                    in {UP_DIR / 'gateway-api-key'} (send it as 'authorization: Bearer <key>')
  review console                     not part of this build yet (see README)

try:
  .venv/bin/classify-image ../shared/datasets/clothing-dataset-small/validation/shoes/*.jpg --marketplace jp-ichiba
  .venv/bin/classify-image PHOTO.jpg --marketplace br-loja --locale pt-BR --json

Ctrl-C stops everything.""", flush=True)
        while not stopping.wait(1.0):
            dead = [name for name, service in stack.services.items() if not service.process.running()]
            if dead:
                print(f"{', '.join(dead)} stopped unexpectedly; stopping the stack (logs in {work_dir})", flush=True)
                return 1
        print("stopping", flush=True)
        return 0
    finally:
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
