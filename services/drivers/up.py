"""`make up`: the local stack on the embedded defaults, running until Ctrl-C or SIGTERM, for people to try.

Builds the models first if they are missing (make up depends on make models), starts the broker, Triton on the CPU,
the SQLite store, the services and the review console, prints where everything is and what to try, writes the
gateway's address and a freshly generated API key, the result service's address and a key for operator tools, and the
first operator's password to .run/up/ (readable by this user only; classify-image and export-corrections find them
there), and stops everything it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from services.localstack.processes import free_port
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions

UP_DIR = REPOSITORY_ROOT / ".run" / "up"


def _write_private(path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_text(text + "\n")


def console_port() -> int:
    """8080 when it is free (what the README names), another free port when it is not."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8080))
            return 8080
        except OSError:
            return free_port()


def main() -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    work_dir = UP_DIR / "stack"
    stack = LocalStack(StackOptions(work_dir=work_dir, console=True, console_port=console_port()))
    print(f"starting the local stack (logs in {work_dir})", flush=True)
    try:
        stack.start()
        gateway = stack.services["gateway"].address
        _write_private(UP_DIR / "gateway-address", gateway)
        _write_private(UP_DIR / "gateway-api-key", stack.gateway_api_key)
        _write_private(UP_DIR / "results-address", stack.services["results"].address)
        _write_private(UP_DIR / "results-api-key", stack.internal_keys["results"]["localstack"])
        _write_private(UP_DIR / "console-password", stack.console.add_operator("admin"))
        _write_private(UP_DIR / "console-url", stack.console.url)
        _write_private(UP_DIR / "triton-access-token", stack.triton.access_token)
        _write_private(UP_DIR / "kafka-bootstrap", stack.broker.bootstrap_servers)
        print(f"""
ready:
  gateway (gRPC, ListingClassifier)  {gateway}
  results (gRPC, ClassificationResults) {stack.services['results'].address}
  Kafka (tansu)                      {stack.broker.bootstrap_servers}
  Triton (gRPC)                      {stack.triton.grpc_url}  models: {', '.join(stack.triton.model_names)}
                                     (every API but health wants 'triton-access-token', in {UP_DIR / 'triton-access-token'})
  gateway API key                    in {UP_DIR / 'gateway-api-key'} (send it as 'authorization: Bearer <key>')
  review console (web)               {stack.console.url}  operator 'admin', password in {UP_DIR / 'console-password'}
  result store                       {stack.database_url}

try:
  .venv/bin/classify-image ../shared/datasets/clothing-dataset-small/validation/shoes/*.jpg --marketplace jp-ichiba
  .venv/bin/classify-image PHOTO.jpg --marketplace br-loja --locale pt-BR --json
  open {stack.console.url} (review what the models were unsure of; corrections go to Kafka)
  make export-corrections OUT=.run/corrected BASE=../shared/datasets/clothing-dataset-small
  .venv/bin/replay-dead-letters --kind SOURCE_UNREACHABLE   (then --replay: send them again)
  CONSOLE_ACCOUNTS_PATH={stack.console.accounts_path} .venv/bin/python -m services.console add-operator NAME --locale de

Ctrl-C stops everything.""", flush=True)
        while not stopping.wait(1.0):
            parts = {**stack.services, "console": stack.console}
            dead = [name for name, part in parts.items() if not part.process.running()]
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
