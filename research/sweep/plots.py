"""Optuna's own study plots (matplotlib): history, importances, a temperature x alpha
contour, parallel coordinates, and the Pareto front of a multi-objective study."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig


def study_figures(study: optuna.Study, cfg: StudyConfig) -> dict[str, Any]:
    """{plot name: matplotlib Figure} for the completed trials (empty when none); a plot
    that does not apply (e.g. importances without variance) is left out with a warning.
    Close them with close_figures."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")  # one-valued axes
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # the target is flipped below where needed
    warnings.filterwarnings("ignore", message="Some regimes for parameter")  # conditional parameters: drawn in some trials only

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    figs: dict[str, Any] = {}
    if not done:
        return figs
    multi = len(cfg.objectives) > 1
    target = (lambda t: t.values[0]) if multi else None
    tname = cfg.objectives[0].metric
    jobs: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=tname),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=tname),
    }
    if len(done) >= 2 and len(study.best_trials[0].params if not multi else done[0].params) >= 2:
        # The importance evaluator ranks toward low targets: flip a maximised first objective.
        flip = multi and cfg.objectives[0].direction == "maximize"
        imp_target = (lambda t: -t.values[0]) if flip else target
        jobs["param_importances"] = lambda: ovm.plot_param_importances(study, target=imp_target, target_name=tname)
    if "temperature" in done[0].params and "alpha" in done[0].params:
        jobs["contour_temperature_alpha"] = lambda: ovm.plot_contour(study, params=["temperature", "alpha"], target=target, target_name=tname)
    if multi:
        jobs["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=[o.metric for o in cfg.objectives])
    for name, job in jobs.items():
        try:
            ax = job()
        except Exception as e:  # a plot that does not apply (e.g. importances without variance) is left out
            logging.getLogger(__name__).warning("study plot %s skipped: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5.5)
        fig.tight_layout()
        figs[name] = fig
    return figs


def close_figures(figures: dict[str, Any]) -> None:
    """Close figures made through pyplot (it keeps every figure open until closed)."""
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
