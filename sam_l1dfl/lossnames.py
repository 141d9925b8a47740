"""The loss names and their one spelling rule, without torch or MONAI.

The config layer (:mod:`sam_l1dfl.training.runconfig`, read by ``--help``, ``--plan`` and every
config check) validates ``loss.name`` with :func:`normalize_loss_name`; keeping it here spares
those light paths the ~4 s import of torch and MONAI.  :mod:`sam_l1dfl.losses` re-exports both
names (``from sam_l1dfl.losses import normalize_loss_name`` keeps working).
"""

from __future__ import annotations

from sam_l1dfl.errors import ConfigError

LOSS_NAMES = ("l1dfl", "dice", "dicefocal", "dicece", "focal")


def normalize_loss_name(name: str) -> str:
    """The canonical loss name: case, ``-`` and ``_`` ignored (``"Dice-Focal"`` → ``"dicefocal"``).

    Raises :class:`~sam_l1dfl.errors.ConfigError` naming the known losses for anything else.
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in LOSS_NAMES:
        raise ConfigError(None, f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return key


__all__ = ["LOSS_NAMES", "normalize_loss_name"]
