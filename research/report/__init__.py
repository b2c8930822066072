"""Tables and plots from tracked runs: study reports (markdown and PNGs), the comparison
report, and the analysis notebooks in ``notebooks/``.

One module a section:

- ``tables``: markdown tables and their cell format;
- ``figures``: a figure without pyplot, figures to PNG files, axis names;
- ``runs``: an experiment's runs from MLflow as pandas frames (``runs_frame``, ``trials_of``,
  ``study_run_of``, ``final_runs_of``) and the best trial of a frame (``best_trial``);
- ``study``: one study, for `research study report` (``study_markdown``, ``study_run_figures``)
  and notebook 01;
- ``comparison``: distillation against compression, the one table (``comparison_table``,
  ``comparison_markdown``) and the one Pareto chart (``plot_pareto``) of `research compare`
  and notebook 02;
- ``teachers``: several teachers, notebook 03;
- ``adaptive``: the adaptive comparison (temperature kinds, teacher weightings) of
  ``research.adaptive``, notebook 03 (``adaptive_table``, ``adaptive_comparison``, ``plot_adaptive``).

Mean ± std over seeds, trial state counts and the best-first order of trials come from
``research.stats``. ``from research import report; report.X`` reaches every public name.
"""

from .adaptive import adaptive_comparison, adaptive_table, plot_adaptive
from .comparison import (
    COMPARISON_METRICS,
    budget_label,
    comparison_figures,
    comparison_markdown,
    comparison_runs,
    comparison_table,
    method_summary,
    pareto_front,
    pareto_mask,
    plot_pareto,
    seed_means,
    size_metric,
)
from .figures import axis_label, figures_to_files, new_figure
from .runs import (
    TRIAL_STATES,
    best_trial,
    clean_runs,
    final_runs_of,
    resolve_tracking_uri,
    runs_frame,
    study_run_of,
    teacher_weights,
    trial_runs,
    trials_of,
)
from .study import (
    best_vs_defaults,
    finalized,
    flatten_trial_rows,
    kind_groups,
    plot_finalized,
    plot_temperature_alpha,
    plot_trial_history,
    study_markdown,
    study_run_figures,
    trials_by_kind,
    trials_overview,
)
from .tables import format_cell, markdown_table
from .teachers import (
    dominant_teacher,
    plot_teacher_weights,
    plot_vs_single_teacher,
    plot_weight_simplex,
    single_teacher_comparison,
    teachers_of,
)

__all__ = [
    "COMPARISON_METRICS", "TRIAL_STATES", "adaptive_comparison", "adaptive_table", "axis_label", "best_trial", "budget_label", "best_vs_defaults", "clean_runs", "comparison_figures",
    "comparison_markdown", "comparison_runs", "comparison_table", "dominant_teacher", "figures_to_files", "final_runs_of", "finalized",
    "flatten_trial_rows", "format_cell", "kind_groups", "trials_by_kind", "markdown_table", "method_summary", "new_figure", "pareto_front", "pareto_mask", "plot_adaptive", "plot_finalized",
    "plot_pareto", "plot_teacher_weights", "plot_temperature_alpha", "plot_trial_history", "plot_vs_single_teacher", "plot_weight_simplex",
    "resolve_tracking_uri", "runs_frame", "seed_means", "single_teacher_comparison", "size_metric", "study_markdown", "study_run_figures", "study_run_of",
    "teacher_weights", "teachers_of", "trial_runs", "trials_of", "trials_overview",
]
