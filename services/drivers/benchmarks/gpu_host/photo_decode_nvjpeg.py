"""Triton Python-backend twin of the DALI `photo_decode` model for a GPU: nvJPEG decoding and resizing on CUDA.

The DALI backend is not in the tritonserver bundle that can travel to a lent GPU machine, so `make bench-gpu` serves
`photo_decode` with this file: the same steps as the DALI pipeline (services/trainer/photo_ensemble.py) with the same
decoder, nvJPEG, through torchvision (a batch of JPEGs in one call); then the longer side resized to each output's size
(bilinear, antialiased) and padded to a centred square of the configured colour, on the GPU; and the console's
thumbnail (the longer side resized to the `thumbnail` output's size, top-left in a zero-padded square) with its shape. A photo that is not a
JPEG is decoded on the CPU (DALI does the same for formats nvJPEG lacks). Each is turned as its EXIF orientation says,
as DALI's decoder turns it (nvJPEG itself does not). A photo that does not decode fails its own
request with the reason; the others are answered. Outputs are copied to the host (what any Triton backend accepts);
GPU_BENCH_DECODE_ON_GPU=1 hands them to the CNNs on the GPU through DLPack instead.
"""

import io
import json
import os
import sys

# The Python backend's stub ignores PYTHONPATH; what was carried to the machine is named here instead.
sys.path[:0] = [p for p in os.environ.get("GPU_BENCH_PYTHONPATH", "").split(":") if p]

import numpy as np
import torch
import torch.nn.functional as F
import triton_python_backend_utils as pb_utils
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from services.drivers.benchmarks.gpu_host.torch_threads import limit_cpu_threads

MAX_PIXELS = 50_000_000  # the service checks the header first; this guards callers that do not
JPEG_START = bytes([0xFF, 0xD8, 0xFF])
THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT = "thumbnail", "thumbnail_shape"  # services/common/decode_path.py


def exif_orientation(photo: bytes) -> int:
    """The EXIF orientation (1 to 8) from the photo's header; 1 without one."""
    try:
        value = int(Image.open(io.BytesIO(photo)).getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001  (a broken EXIF block only loses the orientation)
        return 1
    return value if 1 <= value <= 8 else 1


def turned(image, orientation: int):
    """(3, h, w) turned as the EXIF orientation says (Pillow's exif_transpose, DALI's adjust_orientation)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(1, 2)  # across the main diagonal: orientation 5; then 6, 7 and 8 flip it
    flips = {2: (2,), 3: (1, 2), 4: (1,), 6: (2,), 7: (1, 2), 8: (1,)}.get(orientation)
    return image.flip(flips) if flips else image


def trimmed(row: np.ndarray) -> np.ndarray:
    """The photo's bytes without the batch's zero padding (a JPEG ends with FFD9, so never with a zero)."""
    end = len(row)
    nonzero = np.flatnonzero(row)
    if len(nonzero):
        end = int(nonzero[-1]) + 1
    return row[:end]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], int(o["dims"][0])) for o in config["output"]
                        if o["name"] not in (THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT)]
        self.thumbnail_side = next((int(o["dims"][0]) for o in config["output"] if o["name"] == THUMBNAIL_OUTPUT), 0)
        self.pad_value = int(config.get("parameters", {}).get("pad_value", {}).get("string_value", "255"))
        cuda = torch.cuda.is_available()  # without a GPU (a smoke test of this file) torchvision decodes on the CPU
        device_id = int(args.get("model_instance_device_id") or 0)  # absent on KIND_CPU instances
        self.device = torch.device("cuda", device_id) if cuda else torch.device("cpu")
        limit_cpu_threads(cuda)
        self.to_cpu = os.environ.get("GPU_BENCH_DECODE_ON_GPU") != "1"

    @staticmethod
    def _resized(image, size):
        """(3, h, w) with the longer side at size (bilinear, antialiased)."""
        _, height, width = image.shape
        scale = size / max(width, height)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        return F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True,
                             align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)

    def _square(self, image, size):
        resized = self._resized(image, size)
        _, new_h, new_w = resized.shape
        square = torch.full((3, size, size), self.pad_value, dtype=torch.uint8, device=self.device)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        square[:, top:top + new_h, left:left + new_w] = resized
        return square.permute(1, 2, 0)

    def _thumbnail(self, image):
        """(side, side, 3) with the resized photo top-left and zeros elsewhere, and its (height, width, 3)."""
        resized = self._resized(image, self.thumbnail_side)
        _, new_h, new_w = resized.shape
        square = torch.zeros((3, self.thumbnail_side, self.thumbnail_side), dtype=torch.uint8, device=self.device)
        square[:, :new_h, :new_w] = resized
        return square.permute(1, 2, 0), torch.tensor([new_h, new_w, 3], dtype=torch.int32)

    def _decode(self, rows):
        photos = [torch.from_numpy(trimmed(row).copy()) for row in rows]
        images = [None] * len(photos)
        jpegs = [i for i, p in enumerate(photos) if bytes(p[:3].tolist()) == JPEG_START]
        if jpegs:
            for i, image in zip(jpegs, decode_jpeg([photos[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                   device=self.device)):
                images[i] = image
        for i, photo in enumerate(photos):
            if images[i] is None:
                images[i] = decode_image(photo, mode=ImageReadMode.RGB).to(self.device)
            images[i] = turned(images[i], exif_orientation(photo.numpy().tobytes()))
        for image in images:
            if image.shape[1] * image.shape[2] > MAX_PIXELS:
                raise ValueError(f"{image.shape[2]}x{image.shape[1]} pixels is over the limit")
        return images

    def _tensor(self, name, batch):
        # DLPack, never the stub's numpy bridge (see torch_onnx_model.py)
        batch = batch.cpu() if self.to_cpu else batch
        return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(batch.contiguous()))

    def execute(self, requests):
        responses = []
        for request in requests:
            photos = torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name).to_dlpack()).numpy()
            try:
                with torch.inference_mode():
                    images = self._decode(photos)
                    tensors = [self._tensor(name, torch.stack([self._square(image, size) for image in images]))
                               for name, size in self.outputs]
                    if self.thumbnail_side:
                        thumbnails = [self._thumbnail(image) for image in images]
                        tensors += [self._tensor(THUMBNAIL_OUTPUT, torch.stack([t[0] for t in thumbnails])),
                                    self._tensor(THUMBNAIL_SHAPE_OUTPUT, torch.stack([t[1] for t in thumbnails]))]
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as error:  # noqa: BLE001  (a photo that does not decode fails its request only)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"photo_decode: the photo cannot be decoded: {error}")))
        return responses
