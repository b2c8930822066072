"""Distillation and every compression baseline side by side, at matched budgets.

A comparison config names a teacher, the budgets (x fewer parameters than the
teacher), a student architecture per budget, and the methods. Every
(method, budget, seed) is one MLflow child run of a comparison parent run,
tagged ``method`` (the series) and ``budget``; the table (mean ± std over
seeds) and the Pareto charts (accuracy against bytes and against latency)
go to a folder and onto the parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .compress import compression_method
from .config import CompareConfig, CompareMethod
from .evaluate import count_parameters, payload_bytes
from .pipeline import RunContext, RunResult, compress_run, load_run_data, obtain_teachers, train_student
from .report import comparison_figures, comparison_markdown, comparison_table, figures_to_files
from .tracking import Tracker


def run_config_for(cfg: CompareConfig, method: CompareMethod, budget: float | None):
    """The run config of one (method, budget): the budget's student, and the
    compression knobs that meet the budget (the method's ``at_budget``: sparsity
    for pruning, kept parameter fraction for low rank)."""
    update: dict[str, Any] = {"compress": None}
    if budget is not None and budget in cfg.compare.students:
        update["student"] = cfg.compare.students[budget]
    if method.kind == "compress":
        c = method.compress
        if method.per_budget and method.budget_knobs and budget is not None:
            c = compression_method(c).at_budget(budget)
        update["compress"] = c
        update["compress_source"] = method.compress_source
    return cfg.model_copy(update=update)


def run_comparison(cfg: CompareConfig, out_dir: str | Path, *, config_path: str | Path | None = None, progress: bool = True) -> Path:
    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=progress)
    teachers = obtain_teachers(cfg, data, tracker, config_path=config_path, progress=progress)
    teacher_params = count_parameters(teachers[0].model)
    jobs = [(m, b) for m in cfg.compare.methods for b in (cfg.compare.budgets if m.per_budget else [None])]
    parent = tracker.start(cfg.tracking.experiment, f"compare-{cfg.name}",
                           tags={"role": "comparison", "method": "comparison", "dataset": cfg.data.dataset})
    results: list[dict[str, Any]] = []
    try:
        parent.log_params({"budgets": cfg.compare.budgets, "seeds": cfg.compare.seeds, "methods": [m.label for m in cfg.compare.methods],
                           "teacher_params": teacher_params})
        if config_path is not None:
            parent.log_artifact(config_path, "config")
        bar = tqdm(total=len(jobs) * len(cfg.compare.seeds), desc=f"compare {cfg.name}", unit="run", disable=not progress, dynamic_ncols=True)
        with bar:
            for method, budget in jobs:
                run_cfg = run_config_for(cfg, method, budget)
                for seed in cfg.compare.seeds:
                    bar.set_postfix(method=method.label, budget=budget)
                    r = _one_run(run_cfg, method, budget, seed, data, teachers, tracker, parent.run_id, cfg.name)
                    results.append({"method": method.label, "budget": budget, "seed": seed, "run_id": r.run_id, **r.metrics})
                    bar.update(1)
        teacher_metrics = dict(tracker.get_run(teachers[0].run_id).data.metrics) if teachers[0].run_id else {}
        if teacher_metrics and "payload_bytes" not in teacher_metrics:  # a teacher reused from a run logged before payloads
            teacher_metrics["payload_bytes"] = float(payload_bytes(teachers[0].model))
        if teacher_metrics:
            results.append({"method": "teacher", "budget": 1.0, "seed": -1, "run_id": teachers[0].run_id, **teacher_metrics})
        runs = pd.DataFrame(results)
        rows = comparison_table(runs, teacher_params=teacher_params)
        figures = comparison_figures(runs)
        files = figures_to_files(figures, out_dir)
        md = comparison_markdown(cfg.name, rows, teacher_params=teacher_params, seeds=cfg.compare.seeds, figure_files=files)
        table = Path(out_dir) / "comparison.md"
        table.write_text(md)
        parent.log_text(md, "report/comparison.md")
        for f in files:
            parent.log_artifact(f, "report")
        for name, mean in _best_per_method(rows.to_dict("records")).items():
            parent.log_metrics({f"best_test_accuracy.{name.replace('+', '_then_')}": mean})  # "+" is not allowed in metric names
    except BaseException as e:
        parent.set_tags({"error": " ".join(f"{type(e).__name__}: {e}".split())[:500]})
        tracker.end(parent, "FAILED" if not isinstance(e, KeyboardInterrupt) else "KILLED")
        raise
    tracker.end(parent, "FINISHED")
    return table


def _one_run(run_cfg, method: CompareMethod, budget, seed, data, teachers, tracker, parent_id, name) -> RunResult:
    tags = {"method": method.label, "budget": budget, "comparison": name}
    run_name = f"{method.label}-{budget:g}x-seed{seed}" if budget else f"{method.label}-seed{seed}"
    ctx = RunContext(tracker, role="compare", run_name=run_name, parent_run_id=parent_id, extra_tags=tags, progress=False)
    if method.kind == "distill":
        return train_student(run_cfg, data, ctx, seed=seed, teachers=teachers, log_model=False, log_weights=True)
    if method.kind == "student":
        return train_student(run_cfg, data, ctx, seed=seed, log_model=False, log_weights=True)
    return compress_run(run_cfg, data, ctx, seed=seed, teachers=teachers)


def _best_per_method(rows: list[dict[str, Any]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for r in rows:
        best[r["method"]] = max(best.get(r["method"], 0.0), r["test_accuracy"])
    return best
