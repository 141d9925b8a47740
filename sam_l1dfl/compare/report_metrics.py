"""What the comparison's report shows and tests: the table's metrics, the per-case values, the
Wilcoxon test families, the reference loss and which metrics are better lower."""

from __future__ import annotations

from sam_l1dfl.metrics.detection import CRITERIA

TABLE_METRICS = (("dice", "Dice"), ("fpv_ml", "FPV (mL)"), ("fnv_ml", "FNV (mL)"), ("f1_c1", "F1 C1"),
                 ("f1_c2", "F1 C2"), ("f1_c3", "F1 C3"), ("fp_c1", "FP lesions"))
#: every per-case value averaged over seeds (the table's plus the other criteria and calibration)
CASE_METRICS = tuple(m for m, _ in TABLE_METRICS) + ("fp_c2", "fp_c3", "recall_c1", "recall_c2", "recall_c3",
                                                     "ece", "mid_share")
#: (metric, label, +1 if higher is better else -1): the primary family with C1 as the criterion
STAT_METRICS = (("dice", "Dice", 1), ("f1_c1", "F1 C1", 1), ("fp_c1", "FP lesions", -1))
CALIBRATION_METRICS = (("ece", "ECE (margin)", -1), ("mid_share", "mid share (margin)", -1))
REFERENCE_LOSS = "l1dfl"
LOWER_IS_BETTER = ("fpv_ml", "fnv_ml", "fp_c1", "fp_c2", "fp_c3")


def stat_metrics(primary: str = "c1") -> tuple:
    """The primary family: Dice, F1 and FP lesions under ``primary``."""
    return (("dice", "Dice", 1), (f"f1_{primary}", f"F1 {primary.upper()}", 1),
            (f"fp_{primary}", "FP lesions" if primary == "c1" else f"FP lesions {primary.upper()}", -1))


def detection_metrics() -> tuple:
    return tuple(x for c in CRITERIA for x in ((f"f1_{c}", f"F1 {c.upper()}", 1),
                                              (f"fp_{c}", f"FP lesions {c.upper()}", -1)))


def stat_families(primary: str = "c1") -> list[tuple[str, tuple]]:
    """``[(family, metrics), ...]``: the Wilcoxon test families of the report, each Bonferroni-corrected
    over its own tests (the calibration family runs only when the runs recorded margin calibration)."""
    return [("primary", stat_metrics(primary)), ("detection", detection_metrics()),
            ("calibration", CALIBRATION_METRICS)]


def table_metrics(primary: str = "c1") -> tuple:
    fp = stat_metrics(primary)[2]
    return TABLE_METRICS[:-1] + ((fp[0], fp[1]),)
