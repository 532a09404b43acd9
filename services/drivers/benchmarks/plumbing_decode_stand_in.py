"""Triton Python-backend stand-in for `photo_decode` in `make bench-plumbing`: the GPU's work, next to free.

On a GPU host the decode path's `photo_decode` step (DALI) decodes and resizes each photo on the GPU, so the host's
CPU spends next to nothing there; on this CPU machine, decoding on the CPU
(services/localstack/photo_decode_dali.py, and its Pillow twin before) spends 9 to 17 CPU-ms per photo, more than
everything else together. Like the stand-in CNNs, this model keeps the step's name, tensors and batching and leaves
out the computation: it reads each photo's header (size and format, never the pixels), refuses one over the pixel
limit or one that is not an image as the twin does, and answers the square tensors filled with the pad value and the
thumbnail at the size the real step would make, cut from a photo-like pattern made once (gradients and grain), so
the service's JPEG encoding of it costs what a photo's does.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
MAX_PIXELS = 50_000_000  # as the twin's
HEADER_BYTES = 64 * 1024
THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT = "thumbnail", "thumbnail_shape"  # services/common/decode_path.py


def output_tensor(name, array):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)


def photo_like(side: int) -> np.ndarray:
    """(side, side, 3) uint8: smooth colour gradients with a little grain, which JPEG encodes at a photo's cost."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    channels = [128 + 90 * np.sin(x / 19 + phase) * np.cos(y / 27 - phase) for phase in (0.0, 1.3, 2.6)]
    grain = np.random.default_rng(0).normal(0, 6, (side, side, 3))
    return np.clip(np.stack(channels, axis=-1) + grain, 0, 255).astype(np.uint8)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        pad_value = int(config.get("parameters", {}).get("pad_value", {}).get("string_value", "255"))
        self.squares = [(o["name"], np.full([int(d) for d in o["dims"]], pad_value, np.uint8))
                        for o in config["output"] if o["name"] not in (THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT)]
        self.thumbnail_side = next((int(o["dims"][0]) for o in config["output"] if o["name"] == THUMBNAIL_OUTPUT), 0)
        self.pattern = photo_like(self.thumbnail_side) if self.thumbnail_side else None

    def _size(self, row):
        # The header only: Pillow decodes nothing until asked, and reads the markers up to the frame's size, within
        # the first HEADER_BYTES of nearly every photo (the whole padded row, copied, cost more than the rest here).
        try:
            image = Image.open(io.BytesIO(row[:HEADER_BYTES].tobytes()))
        except Exception:  # noqa: BLE001  (a header longer than that: the whole row, as before)
            image = Image.open(io.BytesIO(row.tobytes()))
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is over the limit")
        try:  # turned sideways by its EXIF orientation, as the real step turns it
            sideways = int(image.getexif().get(0x0112, 1)) in (5, 6, 7, 8)
        except Exception:  # noqa: BLE001  (a broken EXIF block only loses the orientation)
            sideways = False
        return (image.height, image.width) if sideways else (image.width, image.height)

    def _thumbnails(self, sizes):
        """One array for the batch, each photo's thumbnail written into its zeroed square."""
        squares = np.zeros((len(sizes), self.thumbnail_side, self.thumbnail_side, 3), np.uint8)
        shapes = np.zeros((len(sizes), 3), np.int32)
        for square, shape, (width, height) in zip(squares, shapes, sizes):
            scale = self.thumbnail_side / max(width, height)
            shape[:] = (max(1, round(height * scale)), max(1, round(width * scale)), 3)
            square[:shape[0], :shape[1]] = self.pattern[:shape[0], :shape[1]]
        return squares, shapes

    def execute(self, requests):
        responses = []
        for request in requests:
            photos = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            try:
                sizes = [self._size(row) for row in photos]
                tensors = [output_tensor(name, np.broadcast_to(square, (len(sizes), *square.shape)))
                           for name, square in self.squares]
                if self.thumbnail_side:
                    squares, shapes = self._thumbnails(sizes)
                    tensors += [output_tensor(THUMBNAIL_OUTPUT, squares), output_tensor(THUMBNAIL_SHAPE_OUTPUT, shapes)]
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as error:  # noqa: BLE001  (a photo that is not an image fails its request only)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"photo_decode: the photo cannot be decoded: {error}")))
        return responses
