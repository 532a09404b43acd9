"""The names Triton's ensembles and the GPU decode path's models share with their caller.

The trainer writes `photo_decode`, `photo_ensemble` and `pixels_ensemble` with these tensors
(services/trainer/photo_ensemble.py) and the preprocessing service calls the ensembles by them; both images carry
services/common, not each other's packages.
"""

from __future__ import annotations

DECODE_MODEL = "photo_decode"
ENSEMBLE_MODEL = "photo_ensemble"
PHOTO_INPUT = "photo"  # uint8, one row of encoded bytes per photo, zero-padded to the batch's longest
# The CPU path's ensemble: a batch's decoded squares, one input per model input size (image_output(size)), go to Triton
# in one request and it runs every called model on them (instead of one request per model carrying the same pixels).
PIXELS_ENSEMBLE = "pixels_ensemble"


def image_output(size: int) -> str:
    """photo_decode's output, and pixels_ensemble's input, for one model input size: uint8 (size, size, 3)."""
    return f"image_{size}"


def probabilities_output(model: str) -> str:
    """The ensemble's output for one model: its probabilities, float32 (classes,)."""
    return f"{model}_probabilities"


# The console's thumbnail, made by photo_decode from the decoded photo (so the service never decodes it):
# The longer side, the service's default thumbnail size (a larger setting decodes locally): the models' input size,
# so on the CPU path the picture resized for them is the thumbnail too whenever the photo needs no crop.
THUMBNAIL_SIDE = 224
THUMBNAIL_OUTPUT = "thumbnail"  # uint8 (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3): the whole photo, top-left, zero-padded
THUMBNAIL_SHAPE_OUTPUT = "thumbnail_shape"  # int32 (3,): the thumbnail's height, width, channels inside that square
