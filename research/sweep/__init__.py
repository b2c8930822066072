"""Optuna studies: every Optuna call of the workbench lives in this package.

    storage.py    storages, samplers (and their seeds), pruners; study attributes
    space.py      the search space of a study file and the one encoder between
                  trial parameters and config overrides (no Optuna import)
    faults.py     trials whose worker died: found, failed, runs closed, defaults enqueued again
    objective.py  one trial: its config, its run(s: repeats, folds), its values, pruning by the task's metric
    study.py      create / join / load a study, run its trials in one or several processes
    population.py a study's trials K at a time, their students trained in one stacked pass
    results.py    best trials, the parent run's closing record, finalize, rows of studies and trials
    plots.py      Optuna's study plots
    reporting.py  what the ``research study`` commands show (summary, list, report)
    dashboard.py  optuna-dashboard over a study's storage (``research dashboard``)

``from research import sweep; sweep.create_or_join(...)`` works for every name
below. The names are resolved on first use (PEP 562), so that
``research.config`` can import ``research.sweep.space`` (the search-space
schema) without importing Optuna, MLflow or the training pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ATTR_CONFIG", "ATTR_CONFIG_HASH", "ATTR_EXPERIMENT", "ATTR_LOST", "ATTR_LOST_TRIAL", "ATTR_PARENT", "ATTR_TRACKING_URI", "DEFAULT_JOURNAL",
                     "FINISHED_STATES", "StudyError", "check_storage", "count_finished", "lost_reason", "make_pruner", "make_sampler", "open_storage",
                     "sampler_seed", "started_trials", "storage_url"), "storage"),
    **dict.fromkeys(("Choice", "FloatRange", "IntRange", "SearchEncoder", "SearchSpace", "SpaceError"), "space"),
    **dict.fromkeys(("Measurement", "PruningTarget", "StudyContext", "_mark_failed_run", "_objective_values", "_pruning_callback", "make_objective",
                     "check_search_values", "measured_summary", "measurements", "pruning_target", "repeat_seed", "trial_config", "trial_values"), "objective"),
    **dict.fromkeys(("create_or_join", "enqueue_points", "launch", "load_existing", "prepare_context", "run_trials", "split_trials",
                     "worker_main", "WorkerError"), "study"),
    **dict.fromkeys(("best_trials", "enqueued_trials", "final_metric", "finalize", "finish_study", "list_studies", "trials_table"), "results"),
    **dict.fromkeys(("close_figures", "study_figures"), "plots"),
    **dict.fromkeys(("MEMBER_KEYS", "population_problem", "run_population"), "population"),
    **dict.fromkeys(("ATTR_HEARTBEAT", "ATTR_REQUEUE_OF", "ATTR_WORKER", "Recovery", "heartbeat", "recover", "run_gone", "study_lock", "worker_gone", "worker_identity"), "faults"),
    **dict.fromkeys(("StudyReport", "format_finalize", "format_study_list", "format_study_summary", "write_study_report"), "reporting"),
    **dict.fromkeys(("dashboard_storage", "serve_dashboard"), "dashboard"),
    "ConfigError": "..config",
}

__all__ = sorted(n for n in _EXPORTS if not n.startswith("_"))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if module.startswith("..") else f".{module}", __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
