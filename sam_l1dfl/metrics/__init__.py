"""Evaluation: autoPET volume metrics, lesion-wise detection, quantification, reports.

* :mod:`.volume` – Dice (NaN on an empty reference, or the authors' 1/0 rule), FPV, FNV (autoPET
  definitions);
* :mod:`.detection` – C1/C2/C3 lesion matching, TP/FP/FN, precision/recall/F1, size strata and the
  SUVmax / TLU / lesions-per-scan / spread strata (:data:`STRATIFIERS`);
* :mod:`.quantify` – lesion count, TMTV, SUVmax, SUVmean, TLU and their agreement; Dmax
  (:func:`dissemination_mm`, the authors' spread measure);
* :mod:`.calibration` – reliability bins, ECE and mid share over a margin around the lesions;
* :mod:`.bootstrap` – seeded bootstrap 95 % CIs;
* :mod:`.summary` – the ``metrics.csv``/``lesions.csv`` columns, the definitions and the per-run
  summary (pure functions of the rows);
* :mod:`.report` – writes ``metrics.csv``, ``lesions.csv``, ``summary.json``, ``report.html``
  (imports :mod:`.summary`, never :mod:`.dataset`);
* :mod:`.dataset` – the evaluation loop: file discovery by case id, reading through
  :mod:`sam_l1dfl.data.io`, grid checks through :mod:`sam_l1dfl.data.geometry`,
  :func:`evaluate_case`, :func:`evaluate_dataset` (imports :mod:`.summary` and :mod:`.report`).
"""

from .bootstrap import bootstrap_cluster_mean_ci, bootstrap_mean_ci, bootstrap_pooled_ci
from .components import AUTOPET_CONNECTIVITY, component_overlap, label_components
from .dataset import EvaluationResult, evaluate_case, evaluate_dataset
from .calibration import case_calibration, expected_calibration_error, lesion_margin
from .detection import CRITERIA, STRATA, STRATIFIERS, LesionMatching, match_lesions, size_stratum, strata_summary
from .quantify import agreement, dissemination_mm, quantify
from .volume import dice, volume_metrics, voxel_volume_ml

__all__ = [
    "AUTOPET_CONNECTIVITY", "CRITERIA", "STRATA", "STRATIFIERS", "EvaluationResult", "LesionMatching", "agreement",
    "bootstrap_cluster_mean_ci", "bootstrap_mean_ci", "bootstrap_pooled_ci", "case_calibration", "component_overlap", "dice",
    "dissemination_mm", "evaluate_case", "evaluate_dataset", "expected_calibration_error", "label_components",
    "lesion_margin", "match_lesions", "quantify", "size_stratum",
    "strata_summary", "volume_metrics", "voxel_volume_ml",
]
