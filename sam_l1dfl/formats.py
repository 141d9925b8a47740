"""File names and format tags of what sam-l1dfl writes, defined once.

Light on purpose (no torch): the command modules import it when the parser is built.

* model directory (training's ``best/``/``last/``, ``export --format safetensors``):
  :data:`MODEL_FILE` + :data:`CONFIG_FILE` (``"format": DIR_FORMAT``) + :data:`CARD_FILE`;
  the run's :data:`METRICS_FILE` sits next to it or one level up;
* delta (``export --format delta``): one ``.safetensors`` whose metadata says
  ``"format": DELTA_FORMAT``, ``"version": DELTA_VERSION``;
* ONNX (``export --format onnx``): :data:`ENCODER_ONNX` + :data:`DECODER_ONNX` +
  :data:`CONFIG_FILE` (``"format": ONNX_FORMAT``) + :data:`CARD_FILE`.
"""

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
RUN_STATE_FILE = "run_state.json"  # in states/step_N: LR scheduler + progress counters (JSON)

DIR_FORMAT = "sam-l1dfl-model"
#: safetensors metadata key holding the model config (JSON) in a model directory's weights
META_CONFIG_KEY = "sam_l1dfl_model_config"

#: in a model directory of a LoRA run: the LoRA factors of the image encoder (its model.safetensors
#: holds them merged); "format": LORA_FORMAT in the safetensors metadata
LORA_FILE = "lora.safetensors"
LORA_FORMAT = "sam-l1dfl-lora"

DELTA_FORMAT = "sam-l1dfl-delta"
DELTA_VERSION = "1"

ONNX_FORMAT = "sam-l1dfl-onnx"
ENCODER_ONNX = "image_encoder.onnx"
DECODER_ONNX = "prompt_mask_decoder.onnx"
ONNX_OPSET = 17

#: ``sam-l1dfl export --format`` choices
EXPORT_FORMATS = ("sam-med3d", "safetensors", "delta", "onnx")

#: The published SAM-Med3D-turbo weights (``sam-l1dfl weights download``): Hugging Face
#: repository, file name, and the folder they go into (also what ``make demo`` looks for).
WEIGHTS_REPO = "blueyo0/SAM-Med3D"
WEIGHTS_FILE = "sam_med3d_turbo.pth"
WEIGHTS_DIR = "checkpoints"
