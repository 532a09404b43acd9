"""The GPU decode path, a deployment choice: Triton decodes and resizes the photo's bytes itself.

Sending decoded pixels from CPU workers to a GPU is what NVIDIA's own guides avoid. With
PREPROCESSING_DECODE_IN_TRITON=true the preprocessing service checks each photo from its header only (format, byte
size, pixel count: the hostile-image limits) and sends the bytes to `photo_ensemble`, which runs

  photo_decode (NVIDIA DALI backend: nvJPEG decode on the GPU, the longer side resized to each model's input size,
  padded to a centred square; and the console's thumbnail, the longer side resized to THUMBNAIL_SIDE)
  ->  every called model  ->  one probabilities output per model, and the thumbnail with its shape.

The service then only encodes the thumbnail as a small JPEG: it never decodes the photo on this path, but for the
photos DALI would not decode as the CPU path does (GIF and AVIF, which it does not read, and transparent ones, whose
alpha it drops): those it decodes itself and sends as a JPEG of the size the ensemble needs
(services/preprocessing/images.py, prepare_encoded).

Written into the model repository whenever the models are published (from fusion.json: the called models, their
input sizes and batch limits), so it is always in step with them; `python -m services.trainer.photo_ensemble` writes
it again. The DALI pipeline is a Python file the DALI backend serialises when it loads it (`@autoserialize`). The
local CPU Triton has no DALI backend: it serves `photo_decode` as a Python-backend model that runs this same file on
DALI's CPU backend (services/localstack/photo_decode_dali.py), so the whole path runs here.

What differs from the CPU path (services/preprocessing/images.py), and must be measured on a GPU before choosing it:
no product segmentation (the whole photo is resized) and a constant padding colour (white) instead of the border's
median. The pipeline itself runs in the tests on DALI's CPU backend (tests/unit/test_dali_pipeline.py).

Beside them the same function writes `pixels_ensemble`, for the CPU path (the default): the preprocessing service
decodes, segments and resizes each photo itself and sends a batch's squares once, one input per model input size;
Triton hands them to every called model. Without it the same pixels travel once per model (Lite0 and Lite1 both take
224 px).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.common.decode_path import (DECODE_MODEL, ENSEMBLE_MODEL, PHOTO_INPUT, PIXELS_ENSEMBLE,
                                         THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE, image_output,
                                         probabilities_output)
from services.common.fusion_file import FUSION_FILE, FusionConfig

PAD_VALUE = 255  # white: product photos are mostly shot on light backgrounds


@dataclass(frozen=True)
class ServedModel:
    name: str
    input_name: str
    input_size: int
    output_name: str
    class_count: int
    max_batch_size: int

    @classmethod
    def read(cls, repository: Path, name: str) -> "ServedModel":
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        [model_input], [model_output] = config.input, config.output
        return cls(name, model_input.name, int(model_input.dims[0]), model_output.name, int(model_output.dims[-1]),
                   config.max_batch_size)


DALI_PIPELINE = '''"""photo_decode: encoded photos (uint8, one row each, zero-padded to the batch's longest) to uint8 NHWC squares.

Written by services/trainer/photo_ensemble.py; the Triton DALI backend serialises it when it loads it.
"""

import nvidia.dali as dali
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali.plugin.triton import autoserialize

SIZES = {sizes!r}
PAD_VALUE = {pad_value}
THUMBNAIL_SIDE = {thumbnail_side}


@autoserialize
@dali.pipeline_def(batch_size={max_batch_size}, num_threads=4, device_id=0,
                   output_dtype=[types.UINT8] * len(SIZES) + [types.UINT8, types.INT32],
                   output_ndim=[3] * len(SIZES) + [3, 1])
def photo_decode():
    photos = fn.external_source(device="cpu", name="{photo_input}", no_copy=True)
    # nvJPEG on the GPU; turned as the photo's EXIF orientation says, as the CPU path turns it (DALI's default, stated)
    images = fn.decoders.image(photos, device="mixed", output_type=types.RGB, adjust_orientation=True)
    squares = []
    for size in SIZES:
        resized = fn.resize(images, resize_longer=size, interp_type=types.INTERP_LINEAR, antialias=True)
        squares.append(fn.crop(resized, crop=(size, size), out_of_bounds_policy="pad",
                               fill_values=(PAD_VALUE, PAD_VALUE, PAD_VALUE)))  # centred: crop_pos 0.5
    # {thumbnail_output}: the whole photo for the console, top-left in a zero-padded square, and its shape
    thumbnail = fn.resize(images, resize_longer=THUMBNAIL_SIDE, interp_type=types.INTERP_LINEAR, antialias=True)
    shape = fn.shapes(thumbnail, dtype=types.INT32)
    thumbnail = fn.crop(thumbnail, crop=(THUMBNAIL_SIDE, THUMBNAIL_SIDE), crop_pos_x=0.0, crop_pos_y=0.0,
                        out_of_bounds_policy="pad", fill_values=(0, 0, 0))
    return tuple(squares) + (thumbnail, shape)
'''


def dali_pipeline(sizes: list[int], max_batch_size: int) -> str:
    """The DALI pipeline file photo_decode loads, for these input sizes and batch limit."""
    return DALI_PIPELINE.format(sizes=tuple(sizes), pad_value=PAD_VALUE, max_batch_size=max_batch_size,
                                photo_input=PHOTO_INPUT, thumbnail_side=THUMBNAIL_SIDE,
                                thumbnail_output=THUMBNAIL_OUTPUT)


def decode_config(sizes: list[int], max_batch_size: int) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(
        name=DECODE_MODEL, backend="dali", max_batch_size=max_batch_size,
        input=[model_config_pb2.ModelInput(name=PHOTO_INPUT, data_type=model_config_pb2.TYPE_UINT8, dims=[-1])],
        output=[model_config_pb2.ModelOutput(name=image_output(size), data_type=model_config_pb2.TYPE_UINT8,
                                             dims=[size, size, 3]) for size in sizes] + thumbnail_outputs(),
        instance_group=[model_config_pb2.ModelInstanceGroup(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)],
        dynamic_batching=model_config_pb2.ModelDynamicBatching(max_queue_delay_microseconds=2000),
        parameters={"pad_value": model_config_pb2.ModelParameter(string_value=str(PAD_VALUE))})


def thumbnail_outputs() -> list[model_config_pb2.ModelOutput]:
    """The thumbnail photo_decode makes and the ensemble returns beside the probabilities."""
    return [model_config_pb2.ModelOutput(name=THUMBNAIL_OUTPUT, data_type=model_config_pb2.TYPE_UINT8,
                                         dims=[THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3]),
            model_config_pb2.ModelOutput(name=THUMBNAIL_SHAPE_OUTPUT, data_type=model_config_pb2.TYPE_INT32, dims=[3])]


def ensemble_config(models: list[ServedModel], max_batch_size: int) -> model_config_pb2.ModelConfig:
    sizes = sorted({m.input_size for m in models})
    thumbnail = {THUMBNAIL_OUTPUT: THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT: THUMBNAIL_SHAPE_OUTPUT}
    steps = [model_config_pb2.ModelEnsembling.Step(
        model_name=DECODE_MODEL, model_version=-1, input_map={PHOTO_INPUT: PHOTO_INPUT},
        output_map={**{image_output(size): image_output(size) for size in sizes}, **thumbnail})]
    steps += [model_config_pb2.ModelEnsembling.Step(
        model_name=m.name, model_version=-1, input_map={m.input_name: image_output(m.input_size)},
        output_map={m.output_name: probabilities_output(m.name)}) for m in models]
    return model_config_pb2.ModelConfig(
        name=ENSEMBLE_MODEL, platform="ensemble", max_batch_size=max_batch_size,
        input=[model_config_pb2.ModelInput(name=PHOTO_INPUT, data_type=model_config_pb2.TYPE_UINT8, dims=[-1])],
        output=[model_config_pb2.ModelOutput(name=probabilities_output(m.name), data_type=model_config_pb2.TYPE_FP32,
                                             dims=[m.class_count]) for m in models] + thumbnail_outputs(),
        ensemble_scheduling=model_config_pb2.ModelEnsembling(step=steps))


def pixels_ensemble_config(models: list[ServedModel], max_batch_size: int) -> model_config_pb2.ModelConfig:
    """The CPU path's ensemble: one uint8 square input per model input size, every model's probabilities out."""
    sizes = sorted({m.input_size for m in models})
    steps = [model_config_pb2.ModelEnsembling.Step(
        model_name=m.name, model_version=-1, input_map={m.input_name: image_output(m.input_size)},
        output_map={m.output_name: probabilities_output(m.name)}) for m in models]
    return model_config_pb2.ModelConfig(
        name=PIXELS_ENSEMBLE, platform="ensemble", max_batch_size=max_batch_size,
        input=[model_config_pb2.ModelInput(name=image_output(size), data_type=model_config_pb2.TYPE_UINT8,
                                           dims=[size, size, 3]) for size in sizes],
        output=[model_config_pb2.ModelOutput(name=probabilities_output(m.name), data_type=model_config_pb2.TYPE_FP32,
                                             dims=[m.class_count]) for m in models],
        ensemble_scheduling=model_config_pb2.ModelEnsembling(step=steps))


def write_ensembles(repository: Path) -> list[Path]:
    """Writes photo_decode, photo_ensemble and pixels_ensemble for the models fusion.json calls; returns the files
    written."""
    fusion = FusionConfig.load(repository / FUSION_FILE)
    models = [ServedModel.read(repository, name) for name in fusion.called_models]
    max_batch_size = min(m.max_batch_size for m in models)
    sizes = sorted({m.input_size for m in models})
    written = []
    for config, version_file, text in (
            (decode_config(sizes, max_batch_size), "model.dali", dali_pipeline(sizes, max_batch_size)),
            (ensemble_config(models, max_batch_size), None, None),
            (pixels_ensemble_config(models, max_batch_size), None, None)):
        folder = repository / config.name
        (folder / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs a version folder, even empty
        (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
        written.append(folder / "config.pbtxt")
        if version_file:
            (folder / "1" / version_file).write_text(text)
            written.append(folder / "1" / version_file)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path(__file__).resolve().parents[2] / "triton_models")
    for path in write_ensembles(parser.parse_args().repository):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
