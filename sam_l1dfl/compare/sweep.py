"""The comparison as a sweep: one job per (model, loss, fold or seed), launched here, on SLURM
(submitit) or on Ray, then merged into the report as a stage of its own.

    run_comparison(data, out, models, losses, ..., launcher="local" | "submitit" | "ray")
    prepare_comparison(...) -> (plan, jobs)        # --plan / --dry-run: nothing written
    merge_comparison(out)                           # --merge OUT: the report from what finished
    sweep_status(out)                               # --status OUT: every job's state

Stage 1, **the jobs** (:func:`comparison_jobs`): each run of the plan is a
:class:`~sam_l1dfl.cluster.jobs.Job` whose folder is the run's folder ``runs/<run>/`` and whose
target is :func:`sam_l1dfl.compare.runner.execute_run`; its fingerprint hashes the run's config,
its data split (test, validation and training case ids and the sizes of their files) and the code
version; its resources come from the budget (``BUDGETS[b]["resources"]``) under the user's
``resources`` mapping (``resources.gpus=1``, ``resources.models.unet.time_min=600``).  Before
anything is written every job folder is checked: one holding a run made with other settings is
refused (one line) unless ``force`` (then it is emptied, unless it runs right now).  The split
(``splits.json``, ``trainval.csv``) and the sweep (``sweep.json``: every job, the report's meta)
are written, and the launcher runs the jobs (:func:`sam_l1dfl.cluster.launch.launch`), keeping
``status.json`` up to date.

Stage 2, **the merge** (:func:`merge_comparison`, also run at the end of stage 1 when every job
has ended): the SUV-threshold baselines, the fold ensembles and the report of
:mod:`sam_l1dfl.compare.report`, from the jobs that finished.  When every job finished the report
is ``OUT/table.md`` and the rest, as before; when some did not, it goes to ``OUT/partial/`` with
an **INCOMPLETE** banner naming the missing and failed jobs (a fold ensemble needs all its folds),
and the summary says ``"complete": false``: a partial table is never presented as the result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

from sam_l1dfl.cluster.jobs import (Job, check_not_conflicting, clear_job, code_version, file_sizes, git_describe,
                                    make_fingerprint, now_iso)
from sam_l1dfl.cluster.launch import SweepMonitor, check_launcher, launch, note_submitted
from sam_l1dfl.cluster.resources import check_resources_mapping, job_resources
from sam_l1dfl.compare import report
from sam_l1dfl.compare.runner import (BUDGETS, LOSSES, MODELS, plan_comparison, run_baselines, run_ensemble,
                                      write_splits)
from sam_l1dfl.errors import InputError
from sam_l1dfl.io_utils import write_json_atomic
from sam_l1dfl.training.runconfig import merge

SWEEP_FILE = "sweep.json"
STATUS_FILE = "status.json"
PARTIAL_DIR = "partial"
LAUNCH_DIR = "launch"
TARGET = "sam_l1dfl.compare.runner:execute_run"


def _data_part(spec: dict) -> dict:
    """The data split of a run: its test, validation and training case ids, and the sizes of
    every case's files (evidence that the data did not change; paths may move)."""
    test, val = sorted(spec["test"]), sorted(spec["val"])
    train = sorted(set(spec["records"]) - set(test) - set(val))
    recs = spec["records"]
    sizes = {cid: file_sizes([recs[cid].get(k) for k in ("pet", "ct", "label")]) for cid in sorted(recs)}
    return {"test": test, "val": val, "train": train, "file_sizes": sizes}


def comparison_jobs(plan: dict, resources: "dict | None" = None, threads: "int | None" = None) -> list[Job]:
    """One job per run of ``plan`` (:func:`~sam_l1dfl.compare.runner.plan_comparison`), with
    the budget's resources under ``resources`` (per model: ``models.<model>``)."""
    b = BUDGETS[plan["meta"]["budget"]]
    mapping = merge(b.get("resources") or {}, resources or {})
    check_resources_mapping(mapping, MODELS, "resources")
    code = code_version()
    jobs = []
    for spec in plan["specs"]:
        res = job_resources(mapping, spec["model"], "resources")
        payload = {k: v for k, v in spec.items() if k != "loss_arguments"}
        fp = make_fingerprint(spec["fingerprint"], _data_part(spec), code)
        outputs = [spec["pred_dir"]] if spec.get("fold") is not None else []
        jobs.append(Job(name=spec["name"], folder=spec["run_dir"], target=TARGET, payload=payload, fingerprint=fp,
                        resources=res, outputs=outputs, group=spec["model"], threads=threads))
    return jobs


def prepare_comparison(data, out, models: Sequence[str] = ("unet",), losses: Sequence[str] = LOSSES,
                       seeds: int = 1, budget: str = "small", *, resources: "dict | None" = None, **kw) -> tuple:
    """``(plan, jobs)`` without writing anything (``--plan``, ``--dry-run``); ``kw`` as
    :func:`~sam_l1dfl.compare.runner.plan_comparison`."""
    plan = plan_comparison(data, out, models, losses, seeds, budget, write=False, **kw)
    return plan, comparison_jobs(plan, resources)


def describe_jobs(jobs: Sequence[Job]) -> str:
    """The jobs of ``--plan``: name, resources, fingerprint (config / data / code)."""
    w = max((len(j.name) for j in jobs), default=4)
    L = [f"jobs ({len(jobs)}; fingerprint = config/data/code hashes; code {jobs[0].fingerprint['code'] if jobs else '-'}):"]
    for j in jobs:
        f = j.fingerprint
        L.append(f"  {j.name.ljust(w)}  {j.resources.describe()}  fingerprint {f['id']} "
                 f"(config {f['config']}, data {f['data']})  -> {j.folder}")
    return "\n".join(L) + "\n"


def run_comparison(data: "str | os.PathLike", out: "str | os.PathLike", models: Sequence[str] = ("unet",),
                   losses: Sequence[str] = LOSSES, seeds: int = 1, budget: str = "small", *,
                   launcher: str = "local", isolate: bool = True, force: bool = False,
                   resources: "dict | None" = None, submitit_cluster: str = "slurm", ray_address: "str | None" = None,
                   wait: bool = True, progress: bool = True, log: Callable[[str], None] = print, **kw) -> dict:
    """Plan, launch every job that has not finished, then merge (:func:`merge_comparison`);
    returns the report's summary (``"complete": False`` when some job did not finish).  With
    ``wait=False`` (submitit) it returns ``{"submitted": True, "states": ...}`` once the jobs are
    queued; merge later.  ``kw``: the settings of
    :func:`~sam_l1dfl.compare.runner.plan_comparison` (``folds``, ``split_seed``, overrides, ...)."""
    check_launcher(launcher, submitit_cluster, wait)  # a missing extra, no SLURM: one line, nothing written
    plan = plan_comparison(data, out, models, losses, seeds, budget, write=False, progress=progress, **kw)
    jobs = comparison_jobs(plan, resources)
    out, splits, meta = Path(out), plan["splits"], plan["meta"]
    if force:
        for j in jobs:
            clear_job(j)
    else:
        check_not_conflicting(jobs)
    write_splits(out, splits)
    write_json_atomic(out / SWEEP_FILE, {"format": "sam-l1dfl-sweep", "version": 1, "created": now_iso(),
                                         "code": code_version(), "git": git_describe(), "launcher": launcher,
                                         "meta": meta,
                                         "jobs": [j.to_dict() for j in jobs]})
    log(f"split (seed {splits['split_seed']}): {len(splits['train'])} train, {len(splits['val'])} validation, "
        f"{len(splits['test'])} test cases" + (f", {meta['folds']} folds" if meta["folds"] else "")
        + f" -> {out / 'splits.json'}")
    log(f"budget {budget}: {meta['budget_description']}")
    log(f"{len(jobs)} job(s), launcher {launcher}; progress in {out / STATUS_FILE}")
    states = launch(jobs, launcher, work_dir=out / LAUNCH_DIR, status_file=out / STATUS_FILE, isolate=isolate,
                    submitit_cluster=submitit_cluster, ray_address=ray_address, wait=wait, progress=progress, log=log)
    if not wait:
        return {"submitted": True, "states": states}
    return merge_comparison(out, force=force, progress=progress, log=log)


def read_sweep(out: "str | os.PathLike") -> dict:
    p = Path(out) / SWEEP_FILE
    if not p.is_file():
        raise InputError(out, f"no {SWEEP_FILE}: not the output folder of a comparison (run compare_losses.py with "
                              "--data and --out first)")
    try:
        sweep = json.loads(p.read_text())
    except ValueError:
        raise InputError(p, "is not valid JSON") from None
    if not isinstance(sweep, dict) or sweep.get("format") != "sam-l1dfl-sweep":
        raise InputError(p, "is not a sam-l1dfl sweep file")
    return sweep


def sweep_status(out: "str | os.PathLike") -> dict[str, dict]:
    """Every job's state (and ``status.json`` written again)."""
    out = Path(out)
    sweep = read_sweep(out)
    mon = SweepMonitor([Job.coerce(j) for j in sweep["jobs"]], out / STATUS_FILE, sweep.get("launcher", "local"),
                       progress=False, log=lambda m: None)
    note_submitted(mon, out / LAUNCH_DIR)  # jobs queued by an earlier --no-wait submission
    try:
        return mon.update()
    finally:
        mon.close()


def merge_comparison(out: "str | os.PathLike", force: bool = False, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict:
    """The report of the sweep in ``out`` from the jobs that finished (see the module docstring);
    returns its summary plus ``complete``, ``missing``, ``failed`` and ``report`` (its path)."""
    out = Path(out)
    sweep = read_sweep(out)
    jobs = [Job.coerce(j) for j in sweep["jobs"]]
    meta = dict(sweep["meta"])
    splits = json.loads((out / "splits.json").read_text())
    states = sweep_status(out)
    done = [j for j in jobs if states[j.name]["state"] == "done" and (Path(j.folder) / "result.json").is_file()]
    results = {j.name: json.loads((Path(j.folder) / "result.json").read_text()) for j in done}
    missing = [j.name for j in jobs if j.name not in results]
    failed = [n for n in missing if states[n]["state"] == "failed"]
    complete = not missing
    meta.update(complete=complete, missing=missing, failed=failed, n_done=len(results),
                code_versions=sorted({j.fingerprint["code"] for j in done}))
    for n in missing:
        s = states[n]
        log(f"missing: {n}: {s['state']}" + (f": {s.get('error') or s.get('detail')}" if s['state'] in ("failed", "conflict")
                                             else ""))
    target = out if complete else out / PARTIAL_DIR
    baselines = run_baselines(out, splits, force=force, progress=progress)
    specs = {j.name: j.payload for j in jobs}
    if not meta["folds"]:
        summary = report.write_report(target, list(results.values()) + baselines, splits, meta)
    else:
        ensembles = []
        for model in meta["models"]:
            for loss in meta["losses"]:
                names = [j.name for j in jobs if specs[j.name]["model"] == model and specs[j.name]["loss"] == loss]
                if all(n in results for n in names):
                    ensembles.append(run_ensemble(out, [specs[n] for n in names], [results[n] for n in names],
                                                  force=force, progress=progress))
                else:
                    log(f"no {model}-{loss} ensemble: {sum(n not in results for n in names)} of {len(names)} folds missing")
        if results:
            report.write_report(target / "folds", list(results.values()), splits,
                                {**meta, "evaluation": "per fold (each fold's best checkpoint on the test set; case "
                                                       "values averaged over folds)"})
            log(f"per-fold report: {target / 'folds' / 'table.md'}")
        summary = report.write_report(target, ensembles + baselines, splits, meta)
    if complete and (out / PARTIAL_DIR).is_dir():
        shutil.rmtree(out / PARTIAL_DIR)  # an earlier partial report, superseded
    log(f"report: {target / 'table.md'}" + ("" if complete else
                                            f" (INCOMPLETE: {len(missing)} of {len(jobs)} jobs missing, "
                                            f"{len(failed)} of them failed)"))
    return {**summary, "complete": complete, "missing": missing, "failed": failed, "report": str(target / "table.md")}


__all__ = ["PARTIAL_DIR", "STATUS_FILE", "SWEEP_FILE", "comparison_jobs", "describe_jobs", "merge_comparison",
           "prepare_comparison", "read_sweep", "run_comparison", "sweep_status"]
