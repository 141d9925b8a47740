"""Automatic (non-prompted) whole-scan segmentation with the paper's MONAI CNNs.

Public API::

    CnnConfig, load_cnn_config(path, overrides)      # sam_l1dfl.cnn.config
    build_network(name, width, crop_size)            # sam_l1dfl.cnn.networks (MONAI UNet, SegResNet,
                                                     #   AttentionUnet, UNETR as in the paper)
    whole_image_geometry(image, spacing)             # sam_l1dfl.cnn.volumes: RAS+ grid over a scan
    train_cnn(cfg, resume=False) -> CnnTrainResult   # sam_l1dfl.cnn.train (Accelerate)
    AutoSegmenter(checkpoint).segment(pet, ct)       # sam_l1dfl.cnn.infer (sliding window)

Entry points: ``accelerate launch scripts/train_cnn.py --config configs/cnn_unet.yaml`` and
``sam-l1dfl infer-auto --checkpoint runs/cnn/<name>/best --data DIR --out-dir O``.
"""

from sam_l1dfl.cnn.config import CnnConfig, load_cnn_config

__all__ = ["AutoSegmenter", "CnnConfig", "CnnTrainResult", "build_network", "load_cnn_config", "train_cnn",
           "whole_image_geometry"]


def __getattr__(name):  # lazy: keep `import sam_l1dfl.cnn` light
    if name in ("train_cnn", "CnnTrainResult"):
        from sam_l1dfl.cnn import train

        return getattr(train, name)
    if name == "AutoSegmenter":
        from sam_l1dfl.cnn.infer import AutoSegmenter

        return AutoSegmenter
    if name == "build_network":
        from sam_l1dfl.cnn.networks import build_network

        return build_network
    if name == "whole_image_geometry":
        from sam_l1dfl.cnn.volumes import whole_image_geometry

        return whole_image_geometry
    raise AttributeError(f"module 'sam_l1dfl.cnn' has no attribute {name!r}")
