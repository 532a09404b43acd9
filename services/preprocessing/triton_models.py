"""The Triton side: what each model expects (read from the server, never hard-coded) and batched inference."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from services.common.decode_path import (PHOTO_INPUT, THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, image_output,
                                         probabilities_output)
from services.common.errors import ClassificationError, ErrorKind
from services.common.metrics import TRITON_BATCH_SIZE, TRITON_LATENCY
from services.preprocessing.triton_shared_memory import SharedMemoryPool, aligned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One served model's input and output, as Triton's metadata and config describe them."""

    name: str
    version: str
    input_name: str
    input_size: int  # square inputs: height == width
    max_batch_size: int
    output_name: str
    labels: tuple[str, ...]

    @property
    def versioned_name(self) -> str:
        return f"{self.name}:{self.version}"


def read_model_spec(client: triton_grpc.InferenceServerClient, name: str) -> ModelSpec:
    """Reads input layout, size, batch limit and labels from the server. Only uint8 NHWC images are accepted."""
    metadata = client.get_model_metadata(name, as_json=True)
    config = client.get_model_config(name, as_json=True)["config"]
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1:
        raise ClassificationError(ErrorKind.INTERNAL, f"model {name} must have one input and one output")
    model_input, model_output = metadata["inputs"][0], metadata["outputs"][0]
    if model_input["datatype"] != "UINT8":
        raise ClassificationError(ErrorKind.INTERNAL, f"model {name} input must be UINT8, is {model_input['datatype']}")
    layout = config["input"][0].get("format", "FORMAT_NHWC")
    shape = [int(d) for d in model_input["shape"]][1:]  # drop the batch dimension
    if layout not in ("FORMAT_NHWC", "FORMAT_NONE") or len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1]:
        raise ClassificationError(ErrorKind.INTERNAL, f"model {name} input must be square NHWC RGB, is {layout} {shape}")
    version = max(metadata["versions"], key=int)
    class_count = int(model_output["shape"][-1])
    return ModelSpec(name, version, model_input["name"], shape[0], int(config.get("max_batch_size", 1)) or 1,
                     model_output["name"], _read_labels(client, name, version, model_input["name"], shape,
                                                        model_output["name"], class_count))


def _read_labels(client, name, version, input_name, shape, output_name, class_count) -> tuple[str, ...]:
    """Asks Triton's classification extension for every class of one blank image: it answers 'score:index:label'."""
    blank = triton_grpc.InferInput(input_name, [1, *shape], "UINT8")
    blank.set_data_from_numpy(np.zeros((1, *shape), np.uint8))
    result = client.infer(name, [blank], model_version=version,
                          outputs=[triton_grpc.InferRequestedOutput(output_name, class_count=class_count)])
    labels = [""] * class_count
    for entry in result.as_numpy(output_name).reshape(-1):
        _, index, *label = entry.decode().split(":", 2)
        labels[int(index)] = label[0] if label else index
    return tuple(labels)


@dataclass(frozen=True)
class TensorIn:
    """One input of a call: `fill` writes it into the array given (a shared-memory region's bytes, or a new array
    when there is no region); `values`, when the input is ready in an array already, goes in the gRPC message as it
    is."""

    name: str
    dtype: type
    shape: tuple[int, ...]
    fill: Callable[[np.ndarray], None]
    values: np.ndarray | None = None


def tensor_in(name: str, array: np.ndarray) -> TensorIn:
    """An input whose values are ready in an array."""
    return TensorIn(name, array.dtype.type, array.shape, lambda target: np.copyto(target, array), array)


# Triton started with --grpc-restricted-protocol=<categories>:triton-access-token=<token> (and the same for HTTP)
# answers those categories only to calls that carry the token under this key: in gRPC metadata prefixed as Triton
# wants it, as an HTTP header as it is (the key PyTriton uses too).
TRITON_ACCESS_KEY = "triton-access-token"
TRITON_GRPC_ACCESS_HEADER = f"triton-grpc-protocol-{TRITON_ACCESS_KEY}"
# What the deployments restrict so: every API but health (Triton has no authentication of its own; anyone reaching
# it could otherwise infer, change log and trace settings, load and unload models where the mode allows it, or map
# another worker's shared-memory regions and have Triton write into them).
TRITON_RESTRICTED = "inference,metadata,shared-memory,model-config,model-repository,statistics,trace,logging"


class TritonAccessToken(InferenceServerClientPlugin):
    """tritonclient plugin: every call the client makes carries the token."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request) -> None:
        request.headers[TRITON_GRPC_ACCESS_HEADER] = self._token


def triton_client(url: str, access_token: str = "") -> triton_grpc.InferenceServerClient:
    """A gRPC client of Triton whose every call carries access_token (none when empty)."""
    client = triton_grpc.InferenceServerClient(url)
    if access_token:
        client.register_plugin(TritonAccessToken(access_token))
    return client


class TritonClassifier:
    """Runs batches of images through every configured model: one request per batch to pixels_ensemble where Triton
    serves it for exactly these models, otherwise each model called once per batch, in parallel."""

    def __init__(self, url: str, model_names: list[str], timeout_s: float = 30.0, parallel: bool = True,
                 ensemble: str | None = None, pixels_ensemble: str | None = None, shared_memory: bool = False,
                 access_token: str = ""):
        self.url = url
        self.access_token = access_token  # sent with every call (TRITON_ACCESS_KEY); empty: none
        # The ensembles' tensors through system shared memory (a worker on Triton's host); False: in gRPC messages
        self.shared_memory = shared_memory
        self._regions: SharedMemoryPool | None = None
        # The GPU decode path: photos' bytes go to this ensemble, which decodes them and runs every model.
        self.ensemble = ensemble
        # The CPU path: a batch's squares go to this ensemble once, and it runs every model on them. Optional: a
        # Triton that does not serve it (or serves it for other models) gets one request per model.
        self.pixels_ensemble = pixels_ensemble
        self._pixels_ensemble_batch: int | None = None  # its max batch size; 0: not usable; None: not read yet
        self.parallel = parallel
        self.model_names = model_names
        self.timeout_s = timeout_s
        self._client: triton_grpc.InferenceServerClient | None = None
        self._specs: dict[str, ModelSpec] = {}
        # model -> output name -> (numpy dtype, dims after the batch), read from the server on first use
        self._outputs: dict[str, dict[str, tuple[type, tuple[int, ...]]]] = {}
        self._lock = threading.Lock()
        # The specs of the models that gave each calling thread's last answer (answered_by)
        self._answering = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(model_names)), thread_name_prefix="triton")

    def start(self) -> None:
        self._client = triton_client(self.url, self.access_token)
        if self.shared_memory:
            self._regions = SharedMemoryPool(self._client)
            self._regions.start()

    def stop(self) -> None:
        self._pool.shutdown(wait=True)
        if self._regions:
            self._regions.stop()
        if self._client:
            self._client.close()

    @property
    def specs(self) -> list[ModelSpec]:
        """The models' specs, read from the server on first use and after a failure (a reload may change them)."""
        with self._lock:
            if len(self._specs) != len(self.model_names):
                self._pixels_ensemble_batch = None  # read again too: it may have been loaded or changed
                try:
                    self._specs = {n: read_model_spec(self._client, n) for n in self.model_names}
                except InferenceServerException as error:
                    raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton: {error.message()}") from None
            return [self._specs[n] for n in self.model_names]

    def ensemble_makes_thumbnails(self) -> bool:
        """Whether the ensemble returns the console's thumbnail (one written before it existed does not), read from
        the server on first use and after a failure."""
        return {THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT} <= set(self._output_layout(self.ensemble))

    def _output_layout(self, model: str) -> dict[str, tuple[type, tuple[int, ...]]]:
        """A model's outputs as its metadata gives them: name -> (numpy dtype, dims after the batch)."""
        with self._lock:
            if model not in self._outputs:
                try:
                    metadata = self._client.get_model_metadata(model, as_json=True)
                except InferenceServerException as error:
                    raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton: {error.message()}") from None
                self._outputs[model] = {o["name"]: (triton_to_np_dtype(o["datatype"]),
                                                    tuple(int(d) for d in o["shape"][1:]))
                                        for o in metadata.get("outputs", [])}
            return self._outputs[model]

    def ready(self) -> bool:
        try:
            models = self.model_names + ([self.ensemble] if self.ensemble else [])
            return bool(self._client.is_server_ready() and all(self._client.is_model_ready(n)
                                                               for n in models)) and bool(self.specs)
        except (InferenceServerException, ClassificationError):
            return False

    def answered_by(self) -> list[ModelSpec]:
        """The models (names, versions, labels) that gave the calling thread's last answer from classify or
        classify_photos: what its predictions are named by. Reading `specs` after the call could give the versions
        another thread read again in the meantime (a reload), and name an answer by versions that did not make it."""
        specs = getattr(self._answering, "specs", None)
        return specs if specs is not None else self.specs

    def input_sizes(self) -> list[int]:
        return [spec.input_size for spec in self.specs]

    def classify(self, tensors_by_size: dict[int, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        """tensors_by_size: input size -> uint8 batch (N, size, size, 3). Returns model name -> (N, classes) float32.

        deadline (time.monotonic()) bounds every Triton call, so a caller's gRPC deadline reaches Triton.
        """
        return self._once_more_after_a_reload(self._classify, tensors_by_size, deadline)

    def _once_more_after_a_reload(self, call, *args, **kwargs):
        """A model reloaded at a new version during an ensemble's call: the versions were read again, so the call is
        made once more at once (the caller sees nothing); a second reload in a row makes it UNAVAILABLE (retried)."""
        try:
            return call(*args, **kwargs)
        except _ModelsReloaded:
            pass
        try:
            return call(*args, **kwargs)
        except _ModelsReloaded as reloaded:
            raise ClassificationError(ErrorKind.UNAVAILABLE, reloaded.reason) from None

    def _classify(self, tensors_by_size: dict[int, np.ndarray], deadline: float | None) -> dict[str, np.ndarray]:
        specs = self.specs
        missing = sorted({spec.input_size for spec in specs} - set(tensors_by_size))
        if missing:  # a model reloaded at another input size since the batch was prepared
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"the models now take {missing} px squares, which the "
                                      "batch was not prepared at: it is prepared again")
        pixels_batch = self._pixels_ensemble_batch_size(specs)
        if pixels_batch:
            answers = self._infer_pixels(specs, tensors_by_size, pixels_batch, deadline)
        elif not self.parallel:
            answers = {spec.name: self._infer(spec, tensors_by_size[spec.input_size], deadline) for spec in specs}
        else:
            jobs = {spec.name: self._pool.submit(self._infer, spec, tensors_by_size[spec.input_size], deadline)
                    for spec in specs}
            answers = {name: job.result() for name, job in jobs.items()}
        self._answering.specs = specs
        return answers

    def _pixels_ensemble_batch_size(self, specs: list[ModelSpec]) -> int:
        """pixels_ensemble's max batch size when Triton serves it with one input per input size of these models and
        exactly their probabilities as outputs; 0 otherwise. Read on first use and after a failure."""
        if not self.pixels_ensemble:
            return 0
        with self._lock:
            if self._pixels_ensemble_batch is None:
                self._pixels_ensemble_batch = self._read_pixels_ensemble(specs)
            return self._pixels_ensemble_batch

    def _read_pixels_ensemble(self, specs: list[ModelSpec]) -> int:
        name = self.pixels_ensemble
        try:
            if not self._client.is_model_ready(name):
                log.warning("Triton does not serve %s: one request per model and batch", name)
                return 0
            metadata = self._client.get_model_metadata(name, as_json=True)
            config = self._client.get_model_config(name, as_json=True)["config"]
        except InferenceServerException as error:
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton: {error.message()}") from None
        inputs = {i["name"]: [int(d) for d in i["shape"]][1:] for i in metadata.get("inputs", [])}
        outputs = {o["name"] for o in metadata.get("outputs", [])}
        wanted_inputs = {image_output(s.input_size): [s.input_size, s.input_size, 3] for s in specs}
        wanted_outputs = {probabilities_output(s.name) for s in specs}
        if inputs != wanted_inputs or outputs != wanted_outputs:
            log.warning("%s does not serve exactly the called models (%s): one request per model and batch", name,
                        ", ".join(s.name for s in specs))
            return 0
        return int(config.get("max_batch_size", 1)) or 1

    def _infer_pixels(self, specs: list[ModelSpec], tensors_by_size: dict[int, np.ndarray], max_batch_size: int,
                      deadline: float | None) -> dict[str, np.ndarray]:
        """One request per max_batch_size images to pixels_ensemble, carrying each input size's squares once."""
        sizes = sorted({spec.input_size for spec in specs})  # the ensemble's inputs (squares of other sizes stay)
        count = len(tensors_by_size[sizes[0]])
        outputs: dict[str, list[np.ndarray]] = {spec.name: [] for spec in specs}
        for start in range(0, count, max_batch_size):
            rows = min(max_batch_size, count - start)
            inputs = [tensor_in(image_output(size), tensors_by_size[size][start:start + rows]) for size in sizes]
            TRITON_BATCH_SIZE.labels(self.pixels_ensemble).observe(rows)
            began = time.perf_counter()
            try:
                answers = self._call(self.pixels_ensemble, inputs, [probabilities_output(s.name) for s in specs],
                                     rows, deadline)
            except InferenceServerException as error:
                with self._lock:  # reloaded, replaced or unloaded: read both again next time
                    self._specs, self._pixels_ensemble_batch, self._outputs = {}, None, {}
                raise ClassificationError(ErrorKind.UNAVAILABLE,
                                          f"Triton {self.pixels_ensemble}: {error.message()}") from None
            TRITON_LATENCY.labels(self.pixels_ensemble).observe(time.perf_counter() - began)
            self._check_versions_still_served(specs)
            for spec in specs:
                outputs[spec.name].append(answers[probabilities_output(spec.name)])
        return {name: np.concatenate(parts).astype(np.float32, copy=False) for name, parts in outputs.items()}

    def _call(self, model: str, inputs: list[TensorIn], output_names: list[str], rows: int,
              deadline: float | None) -> dict[str, np.ndarray]:
        """One request to an ensemble, its tensors through a shared-memory region when there is one for it (see
        triton_shared_memory.py), otherwise in the gRPC message. Returns output name -> array (rows first).
        Raises InferenceServerException as Triton answered. A region Triton no longer knows (it restarted) is
        replaced and the call made once more at once."""
        outputs = self._output_layout(model) if self._regions else {}
        layout = [(name, *outputs[name]) for name in output_names if name in outputs]
        sizeable = len(layout) == len(output_names) and all(d > 0 for _, _, dims in layout for d in dims)
        offsets, end = [], 0
        for tensor in inputs:
            offsets.append(end)
            end = aligned(end + int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize)
        for _, dtype, dims in layout:
            offsets.append(end)
            end = aligned(end + rows * int(np.prod(dims)) * np.dtype(dtype).itemsize)
        for attempt in (1, 2):
            with (self._regions.region(end) if self._regions and sizeable else contextlib.nullcontext()) as region:
                if region is None:
                    return self._call_over_grpc(model, inputs, output_names, deadline)
                try:
                    return self._call_through_region(model, inputs, layout, rows, offsets, region, deadline)
                except InferenceServerException as error:
                    if _refused_the_input(error):
                        answered = error  # about the photos: the call is over, and the region is kept
                    elif attempt == 1 and "shared memory" in (error.message() or "").lower():
                        region.usable = False  # Triton forgot it (a restart): another one, and the call once more
                        continue
                    else:
                        raise  # the region is destroyed: Triton may still read it for this call
            raise answered
        raise AssertionError("unreachable: the second attempt never continues")

    def _call_over_grpc(self, model: str, inputs: list[TensorIn], output_names: list[str], deadline: float | None
                        ) -> dict[str, np.ndarray]:
        request = []
        for tensor in inputs:
            values = tensor.values
            if values is None:
                values = np.empty(tensor.shape, tensor.dtype)
                tensor.fill(values)
            request.append(triton_grpc.InferInput(tensor.name, list(tensor.shape), np_to_triton_dtype(tensor.dtype)))
            request[-1].set_data_from_numpy(np.ascontiguousarray(values))
        result = self._client.infer(model, request, client_timeout=self._timeout(deadline),
                                    outputs=[triton_grpc.InferRequestedOutput(name) for name in output_names])
        return {name: result.as_numpy(name) for name in output_names}

    def _call_through_region(self, model: str, inputs: list[TensorIn], layout: list, rows: int, offsets: list[int],
                             region, deadline: float | None) -> dict[str, np.ndarray]:
        request = []
        for tensor, offset in zip(inputs, offsets):
            tensor.fill(region.view(tensor.dtype, tensor.shape, offset))
            request.append(triton_grpc.InferInput(tensor.name, list(tensor.shape), np_to_triton_dtype(tensor.dtype)))
            request[-1].set_shared_memory(region.name, int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize,
                                          offset)
        requested, shapes = [], []
        for (name, dtype, dims), offset in zip(layout, offsets[len(inputs):]):
            shapes.append((name, dtype, (rows, *dims), offset))
            requested.append(triton_grpc.InferRequestedOutput(name))
            requested[-1].set_shared_memory(region.name, rows * int(np.prod(dims)) * np.dtype(dtype).itemsize, offset)
        self._client.infer(model, request, client_timeout=self._timeout(deadline), outputs=requested)
        # copies: the region goes back to the pool for the next call
        return {name: region.view(dtype, shape, offset).copy() for name, dtype, shape, offset in shapes}

    def versions_still_served(self, deadline: float | None = None) -> bool:
        """Whether the versions the predictions name (read before) are still the latest ready ones: one small call,
        for a batch answered without calling the models. False means they were read again (a model was reloaded);
        Triton unreachable raises UNAVAILABLE, as a call to the models would."""
        try:
            self._check_versions_still_served(self.specs, deadline)
        except _ModelsReloaded:
            return False
        return True

    def _check_versions_still_served(self, specs: list[ModelSpec], deadline: float | None = None) -> None:
        """After an ensemble's answer: its steps run each model's latest version, and the answer does not say which,
        so the versions the predictions will name (read before) must still be the latest ready ones. A model
        reloaded at a new version meanwhile raises _ModelsReloaded (the call is made again with the versions read
        again), never an answer labelled with the version before. One small call per request."""
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=self._timeout(deadline))
        except InferenceServerException as error:
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton: {error.message()}") from None
        ready: dict[str, int] = {}
        for entry in index.get("models", []):
            if entry.get("state") == "READY" and str(entry.get("version", "")).isdigit():
                ready[entry["name"]] = max(ready.get(entry["name"], 0), int(entry["version"]))
        changed = [s.versioned_name for s in specs if ready.get(s.name) != int(s.version)]
        if changed:
            with self._lock:
                self._specs, self._pixels_ensemble_batch, self._outputs = {}, None, {}
            raise _ModelsReloaded(f"{', '.join(changed)} no longer the latest version served: a model was reloaded "
                                  "during the call")

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout_s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "the caller's deadline passed before Triton was called")
        return min(self.timeout_s, remaining)

    def _infer(self, spec: ModelSpec, batch: np.ndarray, deadline: float | None = None) -> np.ndarray:
        outputs = []
        for start in range(0, len(batch), spec.max_batch_size):
            chunk = np.ascontiguousarray(batch[start:start + spec.max_batch_size])
            model_input = triton_grpc.InferInput(spec.input_name, list(chunk.shape), "UINT8")
            model_input.set_data_from_numpy(chunk)
            TRITON_BATCH_SIZE.labels(spec.name).observe(len(chunk))
            began = time.perf_counter()
            try:
                result = self._client.infer(spec.name, [model_input], model_version=spec.version,
                                            outputs=[triton_grpc.InferRequestedOutput(spec.output_name)],
                                            client_timeout=self._timeout(deadline))
            except InferenceServerException as error:
                with self._lock:
                    self._specs = {}  # the model may have been reloaded or replaced: read it again next time
                raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton {spec.name}: {error.message()}") from None
            TRITON_LATENCY.labels(spec.name).observe(time.perf_counter() - began)
            outputs.append(result.as_numpy(spec.output_name))
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def classify_photos(self, photos: list[bytes], deadline: float | None = None, thumbnails: bool = False
                        ) -> tuple[dict[str, np.ndarray], dict[int, ClassificationError]]:
        """The GPU decode path: encoded photos through the ensemble, max_batch_size at a time (each call one uint8
        row per photo, zero-padded to the longest). Returns model name -> (N, classes) for the photos that decoded
        (rows in input order, the others left out) and photo index -> error for those that did not: a batch that
        fails is retried one photo at a time, so one undecodable photo fails alone. Triton unreachable raises.
        With thumbnails, the same rows of THUMBNAIL_OUTPUT and THUMBNAIL_SHAPE_OUTPUT come in the first dict too."""
        return self._once_more_after_a_reload(self._classify_photos, photos, deadline, thumbnails)

    def _classify_photos(self, photos: list[bytes], deadline: float | None, thumbnails: bool
                         ) -> tuple[dict[str, np.ndarray], dict[int, ClassificationError]]:
        specs = self.specs
        chunk_size = min(spec.max_batch_size for spec in specs)
        extra = [THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT] if thumbnails else []
        rows: dict[str, list[np.ndarray]] = {name: [] for name in [spec.name for spec in specs] + extra}
        failed: dict[int, ClassificationError] = {}
        for start in range(0, len(photos), chunk_size):
            chunk = list(range(start, min(len(photos), start + chunk_size)))
            try:
                answers = self._infer_photos(specs, [photos[i] for i in chunk], deadline, extra)
            except _PhotoRefused:
                answers = None
            if answers is not None:
                for name in rows:
                    rows[name].append(answers[name])
                continue
            for index in chunk:  # which photo was it: one at a time
                try:
                    single = self._infer_photos(specs, [photos[index]], deadline, extra)
                except _PhotoRefused as refused:
                    failed[index] = ClassificationError(ErrorKind.INVALID_IMAGE, refused.reason)
                    continue
                for name in rows:
                    rows[name].append(single[name])
        self._answering.specs = specs
        empty = {spec.name: np.zeros((0, len(spec.labels)), np.float32) for spec in specs}
        # One call's answers (a batch of up to max_batch_size) are used as they are: concatenating one part would copy
        # the thumbnails' 6 MB once more for nothing.
        return {name: (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts
                else empty.get(name, np.zeros((0,), np.uint8)) for name, parts in rows.items()}, failed

    def _infer_photos(self, specs: list[ModelSpec], photos: list[bytes], deadline: float | None,
                      extra_outputs: list[str]) -> dict[str, np.ndarray]:
        longest = max(len(photo) for photo in photos)

        def padded_rows(batch: np.ndarray) -> None:  # each photo's bytes, then zeros to the longest
            for row, photo in enumerate(photos):
                batch[row, :len(photo)] = np.frombuffer(photo, np.uint8)
                batch[row, len(photo):] = 0

        TRITON_BATCH_SIZE.labels(self.ensemble).observe(len(photos))
        began = time.perf_counter()
        try:
            result = self._call(self.ensemble, [TensorIn(PHOTO_INPUT, np.uint8, (len(photos), longest), padded_rows)],
                                [probabilities_output(s.name) for s in specs] + extra_outputs, len(photos), deadline)
        except InferenceServerException as error:
            if _refused_the_input(error):
                raise _PhotoRefused(f"Triton could not decode the photo: {error.message()}"[:500]) from None
            with self._lock:
                self._specs, self._outputs = {}, {}
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"Triton {self.ensemble}: {error.message()}") from None
        TRITON_LATENCY.labels(self.ensemble).observe(time.perf_counter() - began)
        self._check_versions_still_served(specs)
        answers = {s.name: result[probabilities_output(s.name)].astype(np.float32, copy=False) for s in specs}
        return {**answers, **{name: result[name] for name in extra_outputs}}


class _CallOutcome(Exception):
    """An answer from Triton the caller handles itself (not a transport failure), with its reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _ModelsReloaded(_CallOutcome):
    """A model was reloaded at a new version during an ensemble's call: its answer cannot be named."""


class _PhotoRefused(_CallOutcome):
    """Triton could not decode a photo of the batch."""


def _refused_the_input(error: InferenceServerException) -> bool:
    """Triton answered, and the answer is about the photos (a decoder's error), not about Triton being unreachable,
    overloaded, out of time, or the model missing."""
    status = (error.status() or "").upper()
    transport = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "NOT_FOUND", "UNIMPLEMENTED")
    message = (error.message() or "").lower()
    return not any(code in status for code in transport) and any(
        sign in message for sign in ("cannot be decoded", "decoder", "nvjpeg", "image format"))
