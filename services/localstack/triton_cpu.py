"""Runs the real tritonserver binary from the nvidia-pytriton wheel on the CPU, serving triton_models/.

The production configs (platform onnxruntime_onnx, KIND_GPU) are rewritten into a CPU repository where each model
keeps its name, tensors, max batch size, batcher and labels, but runs as a Python-backend model that executes the
same model.onnx with onnxruntime (the bundle lacks the onnxruntime backend).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Callable
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.common.decode_path import PIXELS_ENSEMBLE
from services.localstack.processes import ChildProcess, StartupError, free_port
from services.preprocessing.triton_models import (TRITON_ACCESS_KEY, TRITON_RESTRICTED, TritonClassifier,
                                                   triton_client)

_PYTHON_MODEL = Path(__file__).with_name("onnx_python_model.py")
_DECODE_MODEL = Path(__file__).with_name("photo_decode_dali.py")  # the production DALI pipeline, on the CPU
PILLOW_DECODE_MODEL = Path(__file__).with_name("photo_decode_python.py")  # its Pillow twin, where DALI is missing


def _pytriton_root() -> Path:
    """The folder holding tritonserver/ (the binary, the Python backend, its stubs) with nvidia_pytriton.libs beside
    it: the installed nvidia-pytriton wheel, or TRITONSERVER_BUNDLE (an unpacked copy of those two folders, for a
    machine without the wheel, such as a lent GPU machine)."""
    bundle = os.environ.get("TRITONSERVER_BUNDLE")
    if bundle:
        return Path(bundle) / "pytriton"
    import pytriton

    return Path(pytriton.__file__).parent


def build_cpu_repository(production: Path, destination: Path,
                         decode_model: Path = _DECODE_MODEL) -> tuple[list[str], list[str]]:
    """Writes the CPU twin of the production repository; returns the classifiers' names and the composed models'
    (photo_decode, served by its own DALI pipeline on DALI's CPU backend, or by `decode_model`, and the ensembles,
    which Triton itself runs)."""
    return build_python_repository(production, destination, _PYTHON_MODEL, decode_model,
                                   model_config_pb2.ModelInstanceGroup.KIND_CPU)


def build_python_repository(production: Path, destination: Path, classifier_model: Path, decode_model: Path,
                            kind: int, instances: int = 0) -> tuple[list[str], list[str]]:
    """Writes a repository where every production model keeps its name, tensors, max batch size, batcher and labels
    but runs as a Python-backend model: classifier_model beside a link to the same model.onnx, decode_model for the
    DALI step, on instances of `kind` (KIND_CPU here; KIND_GPU for the GPU bench's CUDA twins), `instances` of each
    (0: as many as the production config says)."""
    shutil.rmtree(destination, ignore_errors=True)
    classifiers, composed = [], []
    for config_path in sorted(production.glob("*/config.pbtxt")):
        source = config_path.parent
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        target = destination / config.name
        if config.platform == "ensemble" or config.backend == "dali":
            if config.backend == "dali":
                config.backend = "python"
                for group in config.instance_group:
                    group.kind = kind
                    group.count = instances or group.count
            (target / "1").mkdir(parents=True)
            (target / "config.pbtxt").write_text(text_format.MessageToString(config))
            if config.backend == "python":
                shutil.copy(decode_model, target / "1" / "model.py")
                for pipeline in source.glob("*/model.dali"):  # what photo_decode_dali.py runs
                    shutil.copy(pipeline, target / "1" / "model.dali")
            composed.append(config.name)
            continue
        if config.platform != "onnxruntime_onnx":
            raise StartupError(f"{config_path}: only onnxruntime_onnx models can be served by the Python backend here")
        versions = [p for p in source.iterdir() if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists()]
        if not versions:
            raise StartupError(f"{source} has no model version: run `make models` first")
        config.platform = ""
        config.backend = "python"
        config.ClearField("optimization")  # TensorRT in FP16 is the GPU Triton's; this twin runs the graph itself
        for group in config.instance_group:
            group.kind = kind
            group.count = instances or group.count
        target.mkdir(parents=True)
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
        for extra in source.iterdir():
            if extra.is_file() and extra.name != "config.pbtxt":
                shutil.copy(extra, target / extra.name)
        for version in versions:
            (target / version.name).mkdir()
            shutil.copy(classifier_model, target / version.name / "model.py")
            (target / version.name / "model.onnx").symlink_to((version / "model.onnx").resolve())
        classifiers.append(config.name)
    return classifiers, composed


def ensemble_share_of_cores(repository: Path) -> int:
    """onnxruntime threads per model: the CPU path's pixels_ensemble runs its models at once, so each gets its share
    of the machine's cores (on 2 cores, both models with every core each went 8% slower than one model at a time:
    `make evaluate`, 44.6 and 45.7 against 48.5 and 49.5 listings/s; with one core each, 49.0). 0 (onnxruntime decides:
    every core) when the repository has no such ensemble."""
    path = repository / PIXELS_ENSEMBLE / "config.pbtxt"
    if not path.exists():
        return 0
    steps = len(text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).ensemble_scheduling.step)
    return max(1, (os.cpu_count() or 1) // max(1, steps))


def _backend_directory(work_dir: Path) -> Path:
    """A backend folder with the Python backend library, its utils and the stub for this interpreter."""
    root = _pytriton_root() / "tritonserver"
    backends = work_dir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _replace_with_copy(root / "backends" / "python" / name, python_backend / name)
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    _replace_with_copy(stub, python_backend / "triton_python_backend_stub")
    return backends


def _replace_with_copy(source: Path, target: Path) -> None:
    """Copies source beside target and renames it over target. Writing over the stub in place failed with 'Text file
    busy' when Triton was started again right after a kill, its stubs not yet gone (a chaos test's restart, under
    load): a rename replaces the name and leaves a running copy alone."""
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copy(source, staged)
    os.replace(staged, target)


class LocalTriton:
    """start() builds the CPU repository, launches tritonserver on free ports and waits until every model is ready."""

    def __init__(self, production_repository: Path, work_dir: Path, onnx_threads: int = 0,
                 build_repository: Callable[[Path, Path], tuple[list[str], list[str]]] = build_cpu_repository,
                 restricted: bool = True):
        self.production_repository = production_repository
        # As the deployments run it: every API but health answers only calls carrying this token (TRITON_RESTRICTED);
        # restricted=False (the GPU bench's own rig): no token, nothing restricted.
        self.access_token = secrets.token_urlsafe(24) if restricted else ""
        self.build_repository = build_repository
        self.work_dir = work_dir
        self.onnx_threads = onnx_threads
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.model_names: list[str] = []  # the classifiers
        # photo_decode and the ensembles (photo_ensemble, pixels_ensemble), when the repository has them
        self.composed_models: list[str] = []
        self._process: ChildProcess | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self):
        """A gRPC client of this Triton whose calls carry its access token."""
        return triton_client(self.grpc_url, self.access_token)

    def classifier(self, model_names: list[str], **options):
        """The preprocessing service's TritonClassifier on this Triton, with its access token."""
        return TritonClassifier(self.grpc_url, model_names, access_token=self.access_token, **options)

    def start(self, timeout_s: float = 120.0) -> None:
        repository = self.work_dir / "model_repository"
        self.model_names, self.composed_models = self.build_repository(self.production_repository, repository)
        backends = _backend_directory(self.work_dir)
        root = _pytriton_root()
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR"), str(root.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["LOCAL_TRITON_ONNX_THREADS"] = str(self.onnx_threads or ensemble_share_of_cores(repository))
        command = [
            str(root / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", f"--metrics-port={self.metrics_port}",
            "--grpc-address=127.0.0.1", "--http-address=127.0.0.1",
            f"--backend-config=python,shm-region-prefix-name={self._new_shm_prefix()}",
            "--model-control-mode=poll", "--repository-poll-secs=5",
            "--allow-metrics=true", "--log-verbose=0",
        ]
        if self.access_token:
            command += [f"--grpc-restricted-protocol={TRITON_RESTRICTED}:{TRITON_ACCESS_KEY}={self.access_token}",
                        f"--http-restricted-api={TRITON_RESTRICTED}:{TRITON_ACCESS_KEY}={self.access_token}"]
        self._process = ChildProcess("tritonserver", command, self.work_dir / "tritonserver.log", env)
        self._process.start()

        client = self.client()
        try:
            self._process.wait_until(
                lambda: client.is_server_ready() and all(client.is_model_ready(n) for n in self.model_names + self.composed_models),
                timeout_s, "ready")
        finally:
            client.close()

    def _new_shm_prefix(self) -> str:
        """Each start names its Python-backend shared-memory regions anew, so they can be removed after it."""
        self.shm_prefix = f"pc{uuid.uuid4().hex[:10]}"
        return self.shm_prefix

    def shm_regions(self) -> list[Path]:
        prefix = getattr(self, "shm_prefix", None)
        return sorted(Path("/dev/shm").glob(f"{prefix}*")) if prefix else []

    def _remove_shm_regions(self) -> None:
        """A killed tritonserver leaves its regions in /dev/shm; what this stack created, it removes."""
        for region in self.shm_regions():
            region.unlink(missing_ok=True)

    def stop(self) -> None:
        if self._process:
            self._process.stop()
        self._remove_shm_regions()

    def freeze(self) -> None:
        """SIGSTOP on Triton and its backend stubs, for fault tests: it keeps its connections and answers nothing."""
        import signal

        if self._process:
            self._process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        import signal

        if self._process:
            self._process.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, for fault tests (its shared-memory regions are removed once it is gone)."""
        import signal

        if self._process:
            self._process.signal(signal.SIGKILL)
            if self._process.process is not None:
                self._process.process.wait(10)
        self._remove_shm_regions()
