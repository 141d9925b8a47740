"""Fine-tuning SAM-Med3D's mask decoder with Accelerate (one or many processes, CPU or GPU).

Public API::

    FinetuneConfig, load_config(path, overrides)   # typed config (sam_l1dfl.training.config)
    train(cfg, resume=False) -> TrainResult        # sam_l1dfl.training.loop
    ClickLoop                                      # the click loop as one nn.Module forward

Shared with the CNN trainer (:mod:`sam_l1dfl.cnn.train`): :mod:`sam_l1dfl.training.runtime`
(run directory, atomic keep-last-K states, ``train_log.jsonl`` + TensorBoard, ``EpochSampler``,
``split_cases``, the :class:`~sam_l1dfl.training.runtime.Trainer` loop skeleton),
:mod:`sam_l1dfl.training.runconfig` (typed YAML loader, ``key=value`` overrides, the ``RunConfig``
base with ``name``/``output_dir``/``seed``/``data``/``loss``/``train``) and
:mod:`sam_l1dfl.training.distributed` (the ``Accelerator`` and its launch guards).

Entry points: ``accelerate launch scripts/finetune.py --config configs/psma.yaml [key=value ...]``
and ``sam-l1dfl finetune --config ...`` (single process).
"""

from sam_l1dfl.training.config import FinetuneConfig, load_config

__all__ = ["FinetuneConfig", "load_config", "train", "TrainResult", "ClickLoop"]


def __getattr__(name):  # lazy: keep `import sam_l1dfl.training` light
    if name in ("train", "TrainResult"):
        from sam_l1dfl.training import loop

        return getattr(loop, name)
    if name == "ClickLoop":
        from sam_l1dfl.training.clickloop import ClickLoop

        return ClickLoop
    raise AttributeError(f"module 'sam_l1dfl.training' has no attribute {name!r}")
