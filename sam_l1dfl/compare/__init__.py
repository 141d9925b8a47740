"""The paper's experiment: Dice vs Dice-Focal vs L1DFL across MONAI CNNs and SAM-Med3D.

    plan_comparison(...), describe_plan(plan)                  # sam_l1dfl.compare.runner (--plan)
    run_comparison(data, out, models, losses, seeds, budget, folds=K, launcher=...)   # .sweep
    merge_comparison(out)                                      # the report (--merge OUT)
    make_folds, majority_vote, vote_share                      # sam_l1dfl.compare.folds
    wilcoxon_paired, rank_biserial, bonferroni                 # sam_l1dfl.compare.stats
    write_report(out, results, splits, meta)                   # sam_l1dfl.compare.report

Entry point: ``python scripts/compare_losses.py --data DIR --models ... --losses ...
--budget small|paper [--folds K | --seeds N] [--plan] [cnn.KEY=V sam.KEY=V loss_params.LOSS.OPT=V]
--out results/``; see docs/reproducing-the-paper.md.
"""

__all__ = ["bonferroni", "rank_biserial", "run_comparison", "wilcoxon_paired"]


def __getattr__(name):  # lazy
    if name == "run_comparison":
        from sam_l1dfl.compare.sweep import run_comparison

        return run_comparison
    if name in ("bonferroni", "rank_biserial", "wilcoxon_paired"):
        from sam_l1dfl.compare import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'sam_l1dfl.compare' has no attribute {name!r}")
