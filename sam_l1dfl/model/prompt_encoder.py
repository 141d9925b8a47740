"""SAM-Med3D prompt encoder (points, optional boxes, low-resolution masks).

Official parameter names: ``pe_layer.positional_encoding_gaussian_matrix``,
``point_embeddings.{0,1}`` (negative, positive), ``not_a_point_embed``, ``mask_downscaling``,
``no_mask_embed``.  With ``use_boxes`` two more ``point_embeddings`` (2, 3) embed the two
corners of a box, as in 2D SAM.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from sam_l1dfl.errors import PromptError
from sam_l1dfl.model.image_encoder import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates: [sin, cos, sin] of 2π(2c−1)·G."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        # The official 3D encoder repeats sin to reach 3 × num_pos_feats channels.
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """Dense PE of a (X, Y, Z) grid, (C, X, Y, Z).

        Official convention: grid cell (i, j, k) is encoded at the normalised coordinate
        ((j + .5)/X, (i + .5)/Y, (k + .5)/Z) — the first two axes are swapped relative to
        :meth:`forward_with_coords`.
        """
        X, Y, Z = size
        dev = self.positional_encoding_gaussian_matrix.device
        i = (torch.arange(X, device=dev, dtype=torch.float32) + 0.5).view(X, 1, 1).expand(X, Y, Z)
        j = (torch.arange(Y, device=dev, dtype=torch.float32) + 0.5).view(1, Y, 1).expand(X, Y, Z)
        k = (torch.arange(Z, device=dev, dtype=torch.float32) + 0.5).view(1, 1, Z).expand(X, Y, Z)
        coords = torch.stack([j / X, i / Y, k / Z], dim=-1)
        return self._pe_encoding(coords).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """PE of (B, N, 3) voxel coordinates (already shifted by +0.5), (B, N, C)."""
        # divide by Python numbers: a torch.tensor(image_size, device=...) would be a host-to-device
        # copy (a host sync on CUDA) at every decoder call of the click loop
        c = coords.float()
        return self._pe_encoding(torch.stack([c[..., d] / float(image_size[d]) for d in range(3)], dim=-1))


class PromptEncoder3D(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int,
        use_boxes: bool = False,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.use_boxes = use_boxes
        self.num_point_embeddings = 4 if use_boxes else 2  # neg, pos, (box corner 1, corner 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            activation(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            activation(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, X, Y, Z) positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points.float() + 0.5  # centre of the voxel
        if pad:
            # The official code appends one "not a point" (label −1) when no box is given.
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        out = torch.where(lab == -1, self.not_a_point_embed.weight.expand_as(pe), pe)
        out = out + (lab == 0) * self.point_embeddings[0].weight + (lab == 1) * self.point_embeddings[1].weight
        return out

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = boxes.float().reshape(-1, 2, 3) + 0.5
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return pe + corner_embed

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        boxes: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(sparse (B, N, C), dense (B, C, X, Y, Z))``.

        ``points``: ``(coords (B, N, 3) voxel indices, labels (B, N))`` with labels 1 positive,
        0 negative, −1 padding.  ``boxes``: (B, 2, 3) min/max corners (voxel indices), needs
        ``use_boxes``.  ``masks``: (B, 1, 4X, 4Y, 4Z) low-resolution logits.
        """
        if boxes is not None:
            if not self.use_boxes:
                raise PromptError(None, "this model has no box embeddings (build it with use_boxes=True)")
            if boxes.dim() != 3 or tuple(boxes.shape[1:]) != (2, 3):
                raise PromptError(None, f"boxes must have shape (B, 2, 3), got {tuple(boxes.shape)}")
        bs = self._batch_size(points, boxes, masks)
        dev = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=dev, dtype=self.no_mask_embed.weight.dtype)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None).to(sparse.dtype)], 1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes).to(sparse.dtype)], dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
