"""The paper's four MONAI networks, 2 input channels (CT, PET) and 2 softmax outputs.

===============  ===========================================================================
``unet``         ``monai.networks.nets.UNet``: channels 16-512, stride 2 throughout, 2 residual
                 units, batch norm
``segresnet``    ``SegResNet``: blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), init_filters 16
``attentionunet````AttentionUnet``: channels 16-512, strides 2
``unetr``        ``UNETR``: img_size = crop size (128³), feature_size 8, hidden 192, MLP 768,
                 3 heads, convolutional patch embedding (MONAI's ``proj_type="conv"``)
===============  ===========================================================================

``width`` multiplies every channel count (tests use tiny widths); ``overrides`` are passed to the
MONAI constructor as they are.  Nothing here is re-implemented: these are MONAI's networks.
"""

from __future__ import annotations

import math
from typing import Any

PAPER_CHANNELS = (16, 32, 64, 128, 256, 512)


def _w(c: int, width: float, minimum: int = 1) -> int:
    return max(minimum, int(round(c * width)))


def network_kwargs(name: str, width: float = 1.0, crop_size: int = 128,
                   overrides: "dict[str, Any] | None" = None) -> tuple[str, dict[str, Any]]:
    """``(MONAI class name, constructor kwargs)`` of network ``name`` at ``width``."""
    name = name.lower().replace("-", "").replace("_", "")
    ov = dict(overrides or {})
    base: dict[str, Any]
    if name == "unet":
        chans = tuple(_w(c, width) for c in PAPER_CHANNELS)
        base = dict(spatial_dims=3, in_channels=2, out_channels=2, channels=chans,
                    strides=(2,) * (len(chans) - 1), num_res_units=2, norm="batch")
        cls = "UNet"
    elif name == "segresnet":
        init = _w(16, width)
        # GroupNorm with MONAI's 8 groups needs init_filters divisible by 8; tiny widths use fewer groups.
        groups = math.gcd(8, init)
        base = dict(spatial_dims=3, in_channels=2, out_channels=2, init_filters=init,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), norm=("GROUP", {"num_groups": groups}))
        cls = "SegResNet"
    elif name == "attentionunet":
        chans = tuple(_w(c, width) for c in PAPER_CHANNELS)
        base = dict(spatial_dims=3, in_channels=2, out_channels=2, channels=chans, strides=(2,) * (len(chans) - 1))
        cls = "AttentionUnet"
    elif name == "unetr":
        heads = 3
        hidden = heads * _w(64, width, 2)
        base = dict(in_channels=2, out_channels=2, img_size=(int(crop_size),) * 3, feature_size=_w(8, width, 2),
                    hidden_size=hidden, mlp_dim=4 * hidden, num_heads=heads, proj_type="conv",
                    norm_name="instance", spatial_dims=3)
        cls = "UNETR"
    else:
        raise ValueError(f"unknown network {name!r}; choose one of unet, segresnet, attentionunet, unetr")
    kw = {**base, **ov}
    import inspect

    import monai.networks.nets as nets

    accepted = set(inspect.signature(getattr(nets, cls).__init__).parameters) - {"self"}
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise ValueError(f"{cls} does not take {unknown}; accepted: {sorted(accepted)}")
    return cls, kw


def build_network(name: str, width: float = 1.0, crop_size: int = 128,
                  overrides: "dict[str, Any] | None" = None):
    """Instantiate the MONAI network (random init; seed the RNG before calling)."""
    import monai.networks.nets as nets

    cls, kw = network_kwargs(name, width, crop_size, overrides)
    return getattr(nets, cls)(**kw)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["PAPER_CHANNELS", "build_network", "count_parameters", "network_kwargs"]
