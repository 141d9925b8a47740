"""``SamMed3DConfig``: every size that determines the SAM-Med3D weights' shapes.

The field names are those of the reference config
``tests/data/golden/sam_med3d_tiny_golden_compact.json`` (and of the official ``build_sam3D``
arguments where they exist), so a config.json written by the official tooling or by us loads
with :meth:`SamMed3DConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sam_l1dfl.errors import ConfigError

# SAM-Med3D and SAM-Med3D-turbo (official ``build_sam3D_vit_b_ori``).
_VIT_B_ORI: dict[str, Any] = dict(
    img_size=128,
    patch_size=16,
    in_chans=1,
    encoder_embed_dim=768,
    encoder_depth=12,
    encoder_num_heads=12,
    encoder_global_attn_indexes=[2, 5, 8, 11],
    window_size=14,
    out_chans=384,
    mask_in_chans=16,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
    decoder_transformer_depth=2,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
)
_PRESETS: dict[str, dict[str, Any]] = {
    "vit_b_ori": _VIT_B_ORI,
    # The geometry of the real model at small width: the config of the golden case
    # ``tests/data/golden/sam_med3d_tiny_golden_compact.json`` (used by the tests and quick demos).
    "tiny": {
        **_VIT_B_ORI,
        "encoder_embed_dim": 64,
        "encoder_depth": 4,
        "encoder_num_heads": 4,
        "encoder_global_attn_indexes": [1, 3],
        "out_chans": 48,
    },
}


#: ``trainable.lora.targets``: the image encoder's Linear layers that LoRA may adapt (name in the
#: config -> module path inside each encoder block, ``image_encoder.blocks.<i>.<path>``).
LORA_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "lin1": "mlp.lin1", "lin2": "mlp.lin2"}
#: What a LoRA config without HF peft is told to install (pyproject's ``lora`` extra).
LORA_EXTRA = "pip install 'sam-l1dfl[lora]'"

@dataclass
class SamMed3DConfig:
    """Architecture of a SAM-Med3D model (defaults: the official ``vit_b_ori``).

    ``in_chans`` > 1 builds a multi-channel patch embedding (e.g. 2 for PET+CT);
    ``use_boxes`` adds the two box-corner point embeddings (indices 2 and 3) that the official
    model lacks.  ``mlp_ratio``, ``use_rel_pos`` and ``layer_norm_eps`` are fixed in the
    official builder and only exposed for completeness.
    """

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    out_chans: int = 384
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_transformer_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    use_boxes: bool = False
    mlp_ratio: float = 4.0
    use_rel_pos: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        self.encoder_global_attn_indexes = [int(i) for i in self.encoder_global_attn_indexes]
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append("encoder_embed_dim must be divisible by encoder_num_heads")
        if self.out_chans % 3:
            problems.append(f"out_chans {self.out_chans} must be divisible by 3 (3D positional encoding)")
        if self.out_chans % 8:
            problems.append(f"out_chans {self.out_chans} must be divisible by 8 (mask upscaling)")
        if (self.out_chans // 2) % self.decoder_num_heads:
            problems.append("out_chans/2 must be divisible by decoder_num_heads")
        if self.in_chans < 1:
            problems.append("in_chans must be >= 1")
        if self.mask_in_chans % 4:
            problems.append("mask_in_chans must be divisible by 4")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            problems.append(f"encoder_global_attn_indexes {bad} outside 0..{self.encoder_depth - 1}")
        if problems:
            raise ConfigError(None, "invalid SamMed3DConfig: " + "; ".join(problems))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SamMed3DConfig":
        if name not in _PRESETS:
            raise ConfigError(None, f"unknown model preset {name!r}; choose one of {sorted(_PRESETS)}")
        d = dict(_PRESETS[name])
        d.update(overrides)
        return cls(**d)

    @classmethod
    def presets(cls) -> list[str]:
        return sorted(_PRESETS)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: "str | None" = None) -> "SamMed3DConfig":
        if not isinstance(d, dict):
            raise ConfigError(source, f"model config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(source, f"unknown model config keys {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**d)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(source, f"bad model config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SamMed3DConfig":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- derived sizes
    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding (8 for 128³ / 16)."""
        return self.img_size // self.patch_size

    @property
    def embed_dim(self) -> int:
        """Prompt / decoder width (the image encoder's ``out_chans``)."""
        return self.out_chans

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution masks (4× the embedding grid: 32 for 128³)."""
        return self.grid_size * 4

    def matches_official_layout(self) -> bool:
        return self.in_chans == 1 and not self.use_boxes
