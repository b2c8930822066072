"""Distillation against compression: the one comparison table and the one Pareto chart,
shared by `research compare` (``comparison.md`` and the PNGs beside it) and notebook 02.

Both take a frame of runs, one row per run with a ``by`` column (``method``: teacher,
student, distill, prune, int8, distill+prune, ...) and the metrics: the rows of
`research compare` as they finish, or an experiment's runs from MLflow
(``comparison_runs``). The runs that repeat one configuration with another seed are
averaged (``seed_means``): a table row and a chart point are a configuration, with the
sample standard deviation over its seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..stats import format_mean_std, mean_std
from .figures import axis_label, new_figure
from .runs import drop_empty
from .tables import markdown_table

# The metrics a comparison averages over seeds, in table order.
COMPARISON_METRICS = ("test_accuracy", "val_accuracy", "params", "params_nonzero", "payload_bytes", "size_bytes", "latency_b1_ms",
                      "latency_b256_ms", "flops")
# A row whose reached reduction is this much above its budget is labelled with it (it is smaller
# than its budget asked: distil+prune at "2x" that reached 4.1x is not a 2x model).
REACHED_LABEL_RATIO = 1.1
# Columns that, with ``by``, say which runs are one configuration: the budget, and the tags a run
# carries for its configuration without the run's seed (``config_hash`` on students and
# compressed models, ``teacher_key`` on teachers).
CONFIG_COLUMNS = ("budget", "config_hash", "teacher_key")


def comparison_runs(runs: pd.DataFrame, *, needs: Sequence[str] = ("test_accuracy",), by: str = "method",
                    exclude_roles: Sequence[str] = ("study", "comparison", "distill_base")) -> pd.DataFrame:
    """Finished runs that carry a ``by`` tag (``method``: teacher, student, distill,
    prune, int8, lowrank, distill+prune, ...) and the ``needs`` metrics: the points of
    the comparison charts. Parent runs and the uncompressed students that
    ``distill+<compression>`` starts from (role distill_base) are left out."""
    if by not in runs:
        return runs.iloc[0:0]
    r = runs[(runs["status"] == "FINISHED") & runs[by].notna()]
    if "role" in r:
        r = r[~r["role"].isin(list(exclude_roles))]
    r = r.dropna(subset=[m for m in needs if m in r])
    if any(m not in r for m in needs):
        return r.iloc[0:0]
    return drop_empty(r).reset_index(drop=True)


def seed_means(frame: pd.DataFrame, *, by: str = "method", metrics: Sequence[str] = COMPARISON_METRICS) -> pd.DataFrame:
    """One row per configuration: the runs with the same ``by`` and the same values in the
    ``CONFIG_COLUMNS`` the frame has (a missing value matches a missing value), which differ
    only by their seed. A frame with none of those columns has one configuration per row.

    Columns: ``by``, ``budget`` and ``model`` when the frame has them (the first run's),
    ``runs``, and for each of ``metrics`` the frame has, its mean and ``<metric>_std`` over
    the runs that have it (``stats.mean_std``: sample std, 0 for one run). Rows in order of
    first appearance."""
    keys = [by, *[c for c in CONFIG_COLUMNS if c in frame.columns]]
    present = [m for m in metrics if m in frame.columns]
    if frame.empty:
        return pd.DataFrame(columns=[by, "runs", *[c for m in present for c in (m, f"{m}_std")]])
    groups = frame.groupby(keys, dropna=False, sort=False) if len(keys) > 1 else frame.groupby(np.arange(len(frame)), sort=False)
    rows = []
    for _, g in groups:
        first = g.iloc[0]
        row: dict[str, Any] = {by: first[by]}
        for c in ("budget", "model"):
            if c in g:
                row[c] = None if pd.isna(first[c]) else first[c]
        row["runs"] = len(g)
        for m in present:
            vals = pd.to_numeric(g[m], errors="coerce").dropna()
            if len(vals):
                row[m], row[f"{m}_std"] = mean_std(vals)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(x: Sequence[float], y: Sequence[float], *, lower_x: bool = True, higher_y: bool = True) -> np.ndarray:
    """True for the points no other point beats on both axes (ties kept)."""
    xs = np.asarray(x, dtype=float) * (1 if lower_x else -1)
    ys = np.asarray(y, dtype=float) * (1 if higher_y else -1)
    keep = np.ones(len(xs), dtype=bool)
    for i in range(len(xs)):
        better = (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        keep[i] = not better.any()
    return keep


def pareto_front(frame: pd.DataFrame, x: str, y: str = "test_accuracy", *, by: str | None = "method",
                 lower_x: bool = True, higher_y: bool = True) -> pd.DataFrame:
    """The non-dominated rows (smaller ``x``, larger ``y``), per ``by`` group, sorted by ``x``."""
    f = frame.dropna(subset=[x, y])
    groups = f.groupby(by, sort=False) if by else [(None, f)]
    parts = [g[pareto_mask(g[x], g[y], lower_x=lower_x, higher_y=higher_y)] for _, g in groups]
    return pd.concat(parts).sort_values([by, x] if by else [x]) if parts else f.iloc[0:0]


def _method_order(frame: pd.DataFrame, by: str) -> list[str]:
    known = ["teacher", "student", "distill", "finetune"]
    methods = list(dict.fromkeys(frame[by].astype(str)))
    return sorted(methods, key=lambda m: (known.index(m) if m in known else len(known), m))


def comparison_table(frame: pd.DataFrame, *, by: str = "method", y: str = "test_accuracy",
                     costs: Sequence[str] = ("payload_bytes", "size_bytes", "latency_b1_ms"), teacher_params: float | None = None) -> pd.DataFrame:
    """The comparison table: one row per configuration (``seed_means``: mean and
    ``<metric>_std`` over seeds of ``COMPARISON_METRICS``), then

    - ``reduction``: the reduction the row reached, ``teacher_params`` / its non-zero parameters
      (its parameters when it has no ``params_nonzero``); ``teacher_params`` defaults to the
      parameters of the largest ``teacher`` row (no column when there is neither);
    - ``within_budget``: for rows with a budget B, whether they hold at most 1/B of the
      teacher's parameters (``reduction >= B``); None for rows without a budget;
    - ``front_<cost>`` for each cost: the row is on its ``by`` group's Pareto front of mean
      ``y`` (higher is better) against mean cost (lower is better).

    Sorted by budget (rows without a budget first), then ``by``."""
    t = seed_means(frame, by=by)
    if t.empty:
        return t
    if teacher_params is None and "params" in t:
        teacher = t.loc[t[by].astype(str) == "teacher", "params"].dropna()
        teacher_params = float(teacher.max()) if len(teacher) else None
    if teacher_params is not None and ("params_nonzero" in t or "params" in t):
        nonzero = t["params_nonzero"] if "params_nonzero" in t else pd.Series(np.nan, index=t.index)
        if "params" in t:
            nonzero = nonzero.fillna(t["params"])
        t["reduction"] = teacher_params / nonzero.where(nonzero > 0)
        if "budget" in t:
            budget = pd.to_numeric(t["budget"], errors="coerce")
            # integer parameter counts against teacher_params / B: no tolerance is needed
            t["within_budget"] = [None if pd.isna(b) or pd.isna(n) else bool(n * b <= teacher_params)
                                  for b, n in zip(budget, nonzero)]
    for cost in costs:
        if cost in t and y in t:
            t[f"front_{cost}"] = False
            for _, g in t.dropna(subset=[cost, y]).groupby(by):
                t.loc[g.index, f"front_{cost}"] = pareto_mask(g[cost], g[y])
    budget = pd.to_numeric(t["budget"], errors="coerce").fillna(0) if "budget" in t else pd.Series(0, index=t.index)
    order = sorted(t.index, key=lambda i: (budget[i], str(t.at[i, by])))
    return t.loc[order].reset_index(drop=True)


def comparison_markdown(name: str, table: pd.DataFrame, *, teacher_params: int, seeds: Sequence[int], figure_files: Sequence[str | Path] = ()) -> str:
    """``comparison.md`` of `research compare`: ``comparison_table`` in markdown (test accuracy
    in %, mean ± std over ``seeds``), then the figures ``figure_files`` (beside the file)."""

    def num(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return None if v is None or pd.isna(v) else float(v)

    def text(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    shown = []
    for r in table.to_dict("records"):
        budget, reduction = num(r, "budget"), num(r, "reduction")
        nonzero = num(r, "params_nonzero")
        shown.append({
            "method": r["method"], "budget": budget_label(budget, reduction, r.get("within_budget")),
            "test accuracy": format_mean_std(r["test_accuracy"], num(r, "test_accuracy_std"), scale=100),
            "non-zero params": text(num(r, "params") if nonzero is None else nonzero, ",.0f"),
            "reached": "-" if reduction is None else f"{reduction:.1f}x",
            "payload bytes": text(num(r, "payload_bytes"), ",.0f"),
            "file bytes": text(num(r, "size_bytes"), ",.0f"),
            "latency b1 ms": text(num(r, "latency_b1_ms"), ".3f"),
            "latency b256 ms": text(num(r, "latency_b256_ms"), ".2f"),
        })
    cols = [(k, k) for k in ("method", "budget", "test accuracy", "non-zero params", "reached", "payload bytes", "file bytes",
                             "latency b1 ms", "latency b256 ms")]
    lines = [f"# Comparison `{name}`", "",
             f"Teacher: {teacher_params:,} parameters. Budgets are x fewer parameters than the teacher; reached: the teacher's "
             "parameters over the row's non-zero ones (a row labelled *over* holds more than 1/B of the teacher's parameters, "
             "one labelled *reached* is well under its budget). Payload: the model's tensors at their stored precision "
             "(int8 weights 1 byte, with their scales; sparse weights as values + indices); file: the deployable file as "
             f"written. Test accuracy in %, mean ± std over seeds {list(seeds)} (the teacher row: its own run). "
             "Latency: CPU, 1 thread, median.", "",
             markdown_table(shown, cols), ""]
    lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figure_files]
    return "\n".join(lines) + "\n"


def budget_label(budget: float | None, reached: float | None, within: bool | None) -> str:
    """The budget cell: ``2x``; ``2x (over: 1.8x)`` when the row holds more than 1/B of the
    teacher's parameters; ``2x (reached 4.1x)`` when it reached more than ``REACHED_LABEL_RATIO``
    times its budget; ``-`` without a budget."""
    if budget is None:
        return "-"
    if reached is None or within is None or pd.isna(within):
        return f"{budget:g}x"
    if not within:
        digits = 1
        while digits < 4 and round(reached, digits) >= budget:  # never "2x (over: 2.0x)": enough digits to show it is under 2
            digits += 1
        return f"{budget:g}x (over: {reached:.{digits}f}x)"
    if reached > REACHED_LABEL_RATIO * budget:
        return f"{budget:g}x (reached {reached:.1f}x)"
    return f"{budget:g}x"


def method_summary(frame: pd.DataFrame, *, by: str = "method", y: str = "test_accuracy") -> pd.DataFrame:
    """One row per method over all its runs: runs, best and mean ± std (sample) accuracy,
    smallest size, fastest latency, fewest parameters."""
    rows = []
    for m in _method_order(frame, by):
        g = frame[frame[by].astype(str) == m]
        row: dict[str, Any] = {by: m, "runs": len(g)}
        if y in g and g[y].notna().any():
            mean, std = mean_std(g[y].dropna())
            row.update({f"best {y}": g[y].max(), f"mean {y}": mean, f"std {y}": std})
        for cost, agg in (("payload_bytes", "min"), ("size_bytes", "min"), ("params", "min"), ("params_nonzero", "min"), ("latency_b1_ms", "min"), ("latency_b256_ms", "min")):
            if cost in g:
                row[f"{agg} {cost}"] = g[cost].agg(agg)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the Pareto chart

_MARKERS = "osD^vPXhp<>"


def plot_pareto(frame: pd.DataFrame, x: str = "size_bytes", y: str = "test_accuracy", *, by: str = "method", logx: bool = True,
                lower_x: bool = True, title: str | None = None):
    """Accuracy ``y`` against a cost ``x``, one series per ``by`` value: the chart of
    `research compare` and of notebook 02.

    A point is a configuration (``seed_means``) at its means, with ± one sample std of ``y``
    over its seeds as bars and, where seeds repeat, each run faint behind it; each method's
    Pareto front (smaller ``x``, larger ``y``; larger ``x`` with ``lower_x=False``) is a
    line, the front over all methods a grey band, the teacher a star. ``x`` is on a log
    scale when ``logx`` and its values span a decade."""
    from matplotlib import colormaps

    fig = new_figure(8, 5.5)
    ax = fig.add_subplot()
    f = frame.dropna(subset=[x, y]) if {x, y} <= set(frame.columns) else frame.iloc[0:0]
    if f.empty:
        ax.text(0.5, 0.5, f"no finished run with both {x} and {y}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    points = seed_means(f, by=by, metrics=(x, y))
    colors = colormaps["tab20"].colors  # dark shades for the first ten series, then the light ones
    for i, m in enumerate(_method_order(points, by)):
        g = points[points[by].astype(str) == m]
        runs = f[f[by].astype(str) == m]
        color = colors[(2 * i) % 20 + (i // 10) % 2]
        marker, size = ("*", 14) if m == "teacher" else (_MARKERS[i % len(_MARKERS)], 7)
        if (g["runs"] > 1).any():
            ax.scatter(runs[x], runs[y], color=color, alpha=0.3, s=14, marker=marker, linewidths=0)
        ax.errorbar(g[x], g[y], yerr=g[f"{y}_std"], fmt=marker, ms=size, capsize=3, color=color,
                    label=f"{m} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
        front = g[pareto_mask(g[x], g[y], lower_x=lower_x)].sort_values(x)
        if len(front) > 1:
            ax.plot(front[x], front[y], color=color, lw=1.5)
    overall = points[pareto_mask(points[x], points[y], lower_x=lower_x)].sort_values(x)
    if len(overall) > 1:
        ax.plot(overall[x], overall[y], color="black", alpha=0.25, lw=6, zorder=0, solid_capstyle="round", label="Pareto front over all methods")
    if logx and (f[x] > 0).all() and f[x].max() / f[x].min() >= 10:  # a log axis only where it spans a decade
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        few_decades = np.log10(f[x].max() / f[x].min()) < 1.5
        ax.xaxis.set_minor_formatter(plain if few_decades else NullFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y) + (" (mean ± std over seeds)" if (points["runs"] > 1).any() else ""))
    ax.set_title(title or f"{axis_label(y)} against {axis_label(x)}: Pareto front per method")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("Pareto front"))  # the methods first, as drawn
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="best", fontsize=8, ncols=2 if len(order) > 7 else 1)
    return fig


def size_metric(frame: pd.DataFrame) -> str:
    """The size a chart is drawn on: ``payload_bytes`` (the model's tensors at their stored
    precision), or ``size_bytes`` (file bytes) for runs logged before payloads were measured."""
    return "payload_bytes" if "payload_bytes" in frame and frame["payload_bytes"].notna().any() else "size_bytes"


def comparison_figures(frame: pd.DataFrame, *, by: str = "method", y: str = "test_accuracy") -> dict[str, Any]:
    """The charts of `research compare` (``plot_pareto``): ``y`` against the model's payload
    (``size_metric``: not the file, whose container dominates small models) and against CPU
    latency at batch 1, named as their PNG files."""
    return {"pareto_accuracy_vs_size": plot_pareto(frame, size_metric(frame), y, by=by),
            "pareto_accuracy_vs_latency": plot_pareto(frame, "latency_b1_ms", y, by=by)}
