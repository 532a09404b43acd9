"""Triton Python-backend twin of the DALI `photo_decode` model (services/trainer/photo_ensemble.py), for the CPU.

Where DALI is not installed (`make bench-gpu --cpu-twins`, on a machine without a GPU) `photo_decode` is served
under the same name and tensors by this file, doing the DALI pipeline's steps with Pillow: decode (turned as the
EXIF orientation says, as DALI's decoder turns it), resize the longer side to each output's size (bilinear,
antialiased), pad to a centred square with the configured colour; and the console's thumbnail (the longer side
resized to the `thumbnail` output's size, top-left in a zero-padded square) with its shape. A photo that does not
decode fails its own request with the reason; the others of the batch are answered.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def output_tensor(name, array):
    """Through DLPack under numpy 2, where the stub's numpy bridge answers empty arrays; through that bridge under
    numpy 1, whose capsules complain when the stub consumes them (each model file stands alone in its repository)."""
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)

MAX_PIXELS = 50_000_000  # the service checks the header first; this guards callers that do not
EXIF_ORIENTATION = 0x0112
# The turn each EXIF orientation asks for (ImageOps.exif_transpose's table). Only the orientation tag is read:
# exif_transpose also wrote the turned image's EXIF anew, unpacking every value of every tag.
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT = "thumbnail", "thumbnail_shape"  # services/common/decode_path.py


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], int(o["dims"][0])) for o in config["output"]
                        if o["name"] not in (THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT)]
        self.thumbnail_side = next((int(o["dims"][0]) for o in config["output"] if o["name"] == THUMBNAIL_OUTPUT), 0)
        self.pad_value = int(config.get("parameters", {}).get("pad_value", {}).get("string_value", "255"))

    def _square(self, image, size):
        width, height = image.size
        scale = size / max(width, height)
        resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
        square = np.full((size, size, 3), self.pad_value, np.uint8)
        top, left = (size - resized.height) // 2, (size - resized.width) // 2
        square[top:top + resized.height, left:left + resized.width] = np.asarray(resized)
        return square

    def _thumbnail(self, image):
        """(side, side, 3) with the resized photo top-left and zeros elsewhere, and its (height, width, 3)."""
        width, height = image.size
        scale = self.thumbnail_side / max(width, height)
        resized = np.asarray(image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                          Image.BILINEAR))
        square = np.zeros((self.thumbnail_side, self.thumbnail_side, 3), np.uint8)
        square[:resized.shape[0], :resized.shape[1]] = resized
        return square, np.array(resized.shape, np.int32)

    def _decode(self, row):
        image = Image.open(io.BytesIO(row.tobytes()))  # trailing zeros (the batch's padding) are past the end
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is over the limit")
        image.load()  # a TIFF turns itself as it loads, and drops its orientation
        turn = UPRIGHT.get(image.getexif().get(EXIF_ORIENTATION, 1))
        image = image.convert("RGB")
        return image if turn is None else image.transpose(turn)

    def execute(self, requests):
        responses = []
        for request in requests:
            # DLPack, not the stub's own numpy bridge, which answers empty arrays under numpy 2 (onnx_python_model.py)
            photos = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            try:
                images = [self._decode(row) for row in photos]
                tensors = [output_tensor(name, np.stack([self._square(image, size) for image in images]))
                           for name, size in self.outputs]
                if self.thumbnail_side:
                    thumbnails = [self._thumbnail(image) for image in images]
                    tensors += [output_tensor(THUMBNAIL_OUTPUT, np.stack([t[0] for t in thumbnails])),
                                output_tensor(THUMBNAIL_SHAPE_OUTPUT,
                                                            np.stack([t[1] for t in thumbnails]))]
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as error:  # noqa: BLE001  (a photo that does not decode fails its request only)
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"photo_decode: the photo cannot be decoded: {error}")))
        return responses
