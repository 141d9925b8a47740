"""Prompts: point/box generation from lesion masks, the prompt file, Slicer markups, click simulation.

Modules: ``types`` (points, boxes, the image they refer to), ``generate`` (prompts from lesion
masks), ``fileformat`` (our JSON document), ``slicer`` (3D Slicer markups), ``io`` (load/save
either kind, with validation), ``clicks`` (click simulation).

``sam_l1dfl.prompts.clicks`` (torch) is imported on its own: ``from sam_l1dfl.prompts import clicks``.
"""

from sam_l1dfl.prompts.generate import NEG_STRATEGIES, STRATEGIES, PromptConfig, generate_prompts
from sam_l1dfl.prompts.io import load_prompts, save_prompts
from sam_l1dfl.prompts.slicer import markups_to_prompts, prompts_to_markups, save_slicer_markups
from sam_l1dfl.prompts.types import (
    FORMAT,
    VERSION,
    BoxPrompt,
    CasePrompts,
    ImageRef,
    LesionPrompts,
    PointPrompt,
)

__all__ = [
    "FORMAT",
    "NEG_STRATEGIES",
    "STRATEGIES",
    "VERSION",
    "BoxPrompt",
    "CasePrompts",
    "ImageRef",
    "LesionPrompts",
    "PointPrompt",
    "PromptConfig",
    "generate_prompts",
    "load_prompts",
    "markups_to_prompts",
    "prompts_to_markups",
    "save_prompts",
    "save_slicer_markups",
]
