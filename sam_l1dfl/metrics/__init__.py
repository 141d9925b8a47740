"""Evaluation: autoPET volume metrics, lesion-wise detection, quantification, reports.

* :mod:`.volume` – Dice (NaN on an empty reference), FPV, FNV (autoPET definitions);
* :mod:`.detection` – C1/C2/C3 lesion matching, TP/FP/FN, precision/recall/F1, size strata;
* :mod:`.quantify` – lesion count, TMTV, SUVmax, SUVmean, TLU and their agreement;
* :mod:`.bootstrap` – seeded bootstrap 95 % CIs;
* :mod:`.summary` – the ``metrics.csv``/``lesions.csv`` columns, the definitions and the per-run
  summary (pure functions of the rows);
* :mod:`.report` – writes ``metrics.csv``, ``lesions.csv``, ``summary.json``, ``report.html``
  (imports :mod:`.summary`, never :mod:`.dataset`);
* :mod:`.dataset` – the evaluation loop: file discovery by case id, reading through
  :mod:`sam_l1dfl.data.io`, grid checks through :mod:`sam_l1dfl.data.geometry`,
  :func:`evaluate_case`, :func:`evaluate_dataset` (imports :mod:`.summary` and :mod:`.report`).
"""

from .bootstrap import bootstrap_mean_ci, bootstrap_pooled_ci
from .components import AUTOPET_CONNECTIVITY, component_overlap, label_components
from .dataset import EvaluationResult, evaluate_case, evaluate_dataset
from .detection import CRITERIA, STRATA, LesionMatching, match_lesions, size_stratum, strata_summary
from .quantify import agreement, quantify
from .volume import dice, volume_metrics, voxel_volume_ml

__all__ = [
    "AUTOPET_CONNECTIVITY", "CRITERIA", "STRATA", "EvaluationResult", "LesionMatching", "agreement",
    "bootstrap_mean_ci", "bootstrap_pooled_ci", "component_overlap", "dice", "evaluate_case",
    "evaluate_dataset", "label_components", "match_lesions", "quantify", "size_stratum",
    "strata_summary", "volume_metrics", "voxel_volume_ml",
]
