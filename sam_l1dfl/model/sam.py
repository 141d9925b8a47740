"""``SamMed3D``: image encoder + prompt encoder + mask decoder, and ``build_sam_med3d``."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from sam_l1dfl.model.config import SamMed3DConfig
from sam_l1dfl.model.image_encoder import ImageEncoderViT3D
from sam_l1dfl.model.mask_decoder import MaskDecoder3D
from sam_l1dfl.model.prompt_encoder import PromptEncoder3D


class SamMed3D(nn.Module):
    """SAM-Med3D with the official submodule and parameter names.

    ``model.load_report`` is set by :func:`~sam_l1dfl.model.load_sam_med3d` (None for a
    freshly built model).
    """

    mask_threshold: float = 0.0

    def __init__(self, cfg: SamMed3DConfig, attn_impl: str = "auto") -> None:
        super().__init__()
        self.config = cfg
        g = cfg.grid_size
        self.image_encoder = ImageEncoderViT3D(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.out_chans,
            use_rel_pos=cfg.use_rel_pos,
            window_size=cfg.window_size,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            eps=cfg.layer_norm_eps,
            attn_impl=attn_impl,
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=cfg.out_chans,
            image_embedding_size=(g, g, g),
            input_image_size=(cfg.img_size,) * 3,
            mask_in_chans=cfg.mask_in_chans,
            use_boxes=cfg.use_boxes,
        )
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=cfg.out_chans,
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            transformer_depth=cfg.decoder_transformer_depth,
            transformer_mlp_dim=cfg.decoder_mlp_dim,
            transformer_num_heads=cfg.decoder_num_heads,
        )
        self.load_report = None

    @property
    def device(self) -> torch.device:
        return self.image_encoder.pos_embed.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S, S) network input → (B, C, S/16, S/16, S/16) image embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder → ``(low_res_masks, iou_pred)``.

        ``points`` (B, N, 3) float voxel indices of the network input with ``labels`` (B, N)
        (1 positive, 0 negative, −1 padding); ``boxes`` (B, 2, 3) corners; ``mask_input``
        (B, 1, S/4, S/4, S/4) logits of a previous prediction.
        """
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        sparse, dense = self.prompt_encoder(
            points=None if points is None else (points, labels), boxes=boxes, masks=mask_input
        )
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        images: torch.Tensor,
        points: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(images), points, labels, boxes, mask_input, multimask_output)


def build_sam_med3d(cfg: "SamMed3DConfig | str | None" = None, attn_impl: str = "auto") -> SamMed3D:
    """Build a randomly initialised model (``cfg``: a config, a preset name, or None = vit_b_ori)."""
    if cfg is None:
        cfg = SamMed3DConfig.preset("vit_b_ori")
    elif isinstance(cfg, str):
        cfg = SamMed3DConfig.preset(cfg)
    return SamMed3D(cfg, attn_impl=attn_impl)
