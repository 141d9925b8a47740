"""Prompted inference: :class:`Segmenter` (see :mod:`.segmenter` for the pipeline) and what it returns.

The steps of :meth:`Segmenter.segment` live in their own modules: :mod:`.lesions` (prompts resolved
into lesions), :mod:`.planning` (crops), :mod:`.encoding`, :mod:`.decoding` (decoder and refinement
clicks) and :mod:`.mapping` (back onto the PET grid); :mod:`.results` holds the report and result
types.  The public names are imported here: ``from sam_l1dfl.inference import Segmenter``.
"""

from .mapping import OUTSIDE_LOGIT
from .planning import Window, plan_windows
from .results import STAGES, DatasetSummary, InferenceReport, SegmentationResult
from .segmenter import Segmenter, checkpoint_preprocess, load_single_case

__all__ = ["DatasetSummary", "InferenceReport", "OUTSIDE_LOGIT", "STAGES", "Segmenter", "SegmentationResult",
           "Window", "checkpoint_preprocess", "load_single_case", "plan_windows"]
