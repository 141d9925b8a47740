"""The figures of the comparison's report (``figures/`` beside ``table.md``): a function per figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sam_l1dfl.io_utils import atomic_path
from sam_l1dfl.metrics.calibration import MID
from sam_l1dfl.metrics.detection import STRATA, STRATIFIERS

COLORS = {"dice": "#4c72b0", "dicefocal": "#dd8452", "l1dfl": "#55a868", "dicece": "#8172b3", "focal": "#937860"}
HATCHES = ["", "//", "..", "xx", "\\\\"]


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _strata_bars(ax, keys: list, strata: dict, names: list, models: list) -> None:
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        vals = [strata[k][n]["f1"] if k in strata else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width, np.nan_to_num(vals), width,
               label=f"{k[0]} / {k[1]}", color=COLORS.get(k[1], "#999999"), edgecolor="black", linewidth=0.4,
               hatch=HATCHES[models.index(k[0]) % len(HATCHES)])
    ax.set_xticks(np.arange(len(names)), [f"{n}\n(n={sum(strata[keys[0]][n][x] for x in ('tp', 'fn'))} lesions)"
                                          if keys else n for n in names], fontsize=7)
    ax.set_ylim(0, 1)


def _grid(models: list, losses: list, w: float = 3.2, h: float = 2.6):
    import matplotlib.pyplot as plt

    return plt.subplots(len(models), len(losses), figsize=(w * len(losses), h * len(models)), squeeze=False)


def _histograms(calib: dict, models: list, losses: list, title: str, margin: bool):
    fig, axes = _grid(models, losses)
    for i, m in enumerate(models):
        for j, l in enumerate(losses):
            ax = axes[i][j]
            c = calib.get((m, l))
            c = c.get("margin") if (c and margin) else c
            if c is None:
                ax.axis("off")
                continue
            edges = np.linspace(0, 1, len(c["correct"]) + 1)
            for k, col in (("correct", "#4c72b0"), ("incorrect", "#c44e52")):
                tot = c[k].sum()
                ax.stairs(c[k] / tot if tot else c[k], edges, label=f"{k} ({int(tot):,} vox)", color=col, fill=False,
                          linewidth=1.4)
            ax.set_yscale("log")
            ax.set_title(f"{m} / {l}", fontsize=9)
            ax.set_xlabel("predicted lesion probability", fontsize=8)
            if j == 0:
                ax.set_ylabel("fraction of voxels (log)", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _fig_size_strata(fdir: Path, keys: list, strata: dict, models: list, P: str, tag: str) -> Path:
    """1. per-size-stratum F1 bars"""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    _strata_bars(ax, keys, strata["size"], [n for n, _, _ in STRATA], models)
    ax.set_ylabel(f"F1 ({P}, pooled over test cases and seeds)")
    ax.set_title("Lesion detection F1 per size stratum" + tag)
    ax.legend(fontsize=7, ncol=2)
    return _save_fig(fig, fdir / "strata_f1.png")


def _fig_other_strata(fdir: Path, keys: list, strata: dict, models: list, P: str, tag: str) -> Path:
    """2. the other strata"""
    import matplotlib.pyplot as plt

    others = [b for b in STRATIFIERS if b != "size"]
    fig, axs = plt.subplots(1, len(others), figsize=(max(6, 1.1 * len(keys) + 2) * len(others) / 1.6, 4), squeeze=False)
    for ax, by in zip(axs[0], others):
        _strata_bars(ax, keys, strata[by], [n for n, _, _ in STRATIFIERS[by][2]], models)
        ax.set_title(f"by {by.replace('_', ' ')}", fontsize=9)
    axs[0][0].set_ylabel(f"F1 ({P}, pooled)")
    axs[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle("Lesion detection F1 per stratum" + tag, fontsize=10)
    fig.tight_layout()
    return _save_fig(fig, fdir / "strata_other.png")


def _fig_fp_counts(fdir: Path, keys: list, means: dict, primary: str, tag: str, rng) -> Path:
    """3. FP count distributions"""
    import matplotlib.pyplot as plt

    P = primary.upper()
    labels = [f"{m}\n{l}" for m, l in keys]
    fp = f"fp_{primary}"
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    data = [[v[fp] for v in means[k].values() if math.isfinite(v[fp])] for k in keys]
    ax.boxplot(data, showfliers=False)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=COLORS.get(keys[i - 1][1], "k"), zorder=3)
    ax.set_xticks(range(1, len(keys) + 1), labels, fontsize=8)
    ax.set_ylabel(f"false-positive lesions per test case ({P})")
    ax.set_title("False positives per case" + tag)
    return _save_fig(fig, fdir / "fp_counts.png")


def _fig_calibration(fdir: Path, keys: list, means: dict, calib: dict, tag: str, rng) -> dict[str, Path]:
    """4. whole-scan calibration histograms, then those of the lesion margin, 5. the reliability
    diagrams and 6. the bimodality boxes (when the runs measured the margin)."""
    paths = {}
    cal_keys = [k for k in keys if k in calib]
    cm = list(dict.fromkeys(m for m, _ in cal_keys))
    cl = list(dict.fromkeys(l for _, l in cal_keys))
    if cal_keys:
        fig = _histograms(calib, cm, cl, "Calibration: probabilities of correctly vs incorrectly classified voxels "
                          "(whole scans)" + tag, margin=False)
        paths["calibration"] = _save_fig(fig, fdir / "calibration.png")
    margin_keys = [k for k in cal_keys if calib[k].get("margin")]
    if margin_keys:
        mm = calib[margin_keys[0]]["margin"]["margin_mm"]
        fig = _histograms(calib, cm, cl, f"Calibration within {mm:g} mm of the lesions: correct vs incorrect voxels"
                          + tag, margin=True)
        paths["calibration_margin"] = _save_fig(fig, fdir / "calibration_margin.png")
        paths["reliability"] = _fig_reliability(fdir, calib, margin_keys, mm, tag)
        paths["bimodality"] = _fig_bimodality(fdir, means, margin_keys, tag, rng)
    return paths


def _fig_reliability(fdir: Path, calib: dict, margin_keys: list, mm: float, tag: str) -> Path:
    """5. reliability diagrams, one panel per model"""
    import matplotlib.pyplot as plt

    mm_models = list(dict.fromkeys(m for m, _ in margin_keys))
    fig, axs = plt.subplots(1, len(mm_models), figsize=(3.6 * len(mm_models), 3.6), squeeze=False)
    for ax, m in zip(axs[0], mm_models):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for k in margin_keys:
            if k[0] != m:
                continue
            g = calib[k]["margin"]
            ok = g["count"] > 0
            conf = g["prob_sum"][ok] / g["count"][ok]
            freq = g["pos_sum"][ok] / g["count"][ok]
            ax.plot(conf, freq, marker="o", markersize=3, color=COLORS.get(k[1], "k"),
                    label=f"{k[1]} (ECE {g['ece']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("share of lesion voxels", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(f"Reliability within {mm:g} mm of the lesions (equal-width bins)" + tag, fontsize=10)
    fig.tight_layout()
    return _save_fig(fig, fdir / "reliability.png")


def _fig_bimodality(fdir: Path, means: dict, margin_keys: list, tag: str, rng) -> Path:
    """6. bimodality: per-case share of probabilities in [0.1, 0.9)"""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(margin_keys) + 2), 4))
    data = [[v["mid_share"] for v in means[k].values() if math.isfinite(v.get("mid_share", float("nan")))]
            for k in margin_keys]
    ax.boxplot(data, showfliers=False)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=COLORS.get(margin_keys[i - 1][1], "k"),
                   zorder=3)
    ax.set_xticks(range(1, len(margin_keys) + 1), [f"{m}\n{l}" for m, l in margin_keys], fontsize=8)
    ax.set_ylabel(f"share of margin voxels with p in [{MID[0]}, {MID[1]})")
    ax.set_title("Bimodality per test case (lower: more bimodal)" + tag)
    return _save_fig(fig, fdir / "bimodality.png")


def figures(out: Path, keys: list, means: dict, strata: dict, calib: dict, smoke: bool,
            primary: str = "c1") -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")

    fdir = out / "figures"
    paths = {}
    tag = "  [SMOKE-SCALE]" if smoke else ""
    P = primary.upper()
    models = list(dict.fromkeys(m for m, _ in keys))
    paths["strata_f1"] = _fig_size_strata(fdir, keys, strata, models, P, tag)
    paths["strata_other"] = _fig_other_strata(fdir, keys, strata, models, P, tag)
    rng = np.random.default_rng(0)  # one stream: the FP and the bimodality dots, in that order
    paths["fp_counts"] = _fig_fp_counts(fdir, keys, means, primary, tag, rng)
    paths.update(_fig_calibration(fdir, keys, means, calib, tag, rng))
    return paths
