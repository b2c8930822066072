"""The adaptive comparison (``research.adaptive``: temperature kinds and teacher weightings
against their fixed baselines) rebuilt from its tracked runs, for notebook 03: the table
(:func:`adaptive_table`, :func:`adaptive_comparison`) and its chart (:func:`plot_adaptive`)."""

from __future__ import annotations

import math

import pandas as pd

from ..stats import mean_std
from .figures import new_figure
from .runs import runs_frame, with_role

ADAPTIVE_COLUMNS = ["part", "method", "seeds", "test_mean", "test_sd", "val_mean", "is_baseline", "delta"]


def adaptive_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The table of an adaptive comparison (``research.adaptive``) rebuilt from its tracked runs.

    ``runs``: ``runs_frame`` of the comparison's experiment. The child runs carry a ``rows`` tag
    ("index:part:method|...", index: the row's place in the table; a run may count in several rows)
    and the parent run (role comparison) a ``baselines`` tag. Returns one row per (part, method), in
    the order the comparison made them: ``part``, ``method``, ``seeds``, ``test_mean``, ``test_sd``
    (sample sd, ``stats.mean_std``), ``val_mean``, ``is_baseline``, ``delta`` (test mean minus the
    part's baseline; None on the baseline). Empty when there is none.
    """
    if "rows" not in runs or "role" not in runs:
        return pd.DataFrame(columns=ADAPTIVE_COLUMNS)
    parents = with_role(runs, "comparison")
    parents = parents[parents["baselines"].notna()] if "baselines" in parents else parents.iloc[0:0]
    if parents.empty:
        return pd.DataFrame(columns=ADAPTIVE_COLUMNS)
    parent = parents.sort_values("start_time").iloc[-1]  # the latest comparison
    children = runs[(runs.get("parent_run_id") == parent["run_id"]) & runs["rows"].notna()]
    children = children.sort_values("start_time")
    baselines = set(str(parent["baselines"]).split("|"))
    order: dict[tuple[int, str, str], list[pd.Series]] = {}
    for _, r in children.iterrows():
        for entry in str(r["rows"]).split("|"):
            index, part, method = entry.split(":", 2)
            order.setdefault((int(index), part, method), []).append(r)
    out = []
    for (_, part, method), rs in sorted(order.items(), key=lambda item: item[0][0]):
        test_mean, test_sd = mean_std(float(r["test_accuracy"]) for r in rs)
        val_mean, _ = mean_std(float(r["val_accuracy"]) for r in rs)
        out.append({"part": part, "method": method, "seeds": len(rs), "test_mean": test_mean, "test_sd": test_sd,
                    "val_mean": val_mean, "is_baseline": f"{part}:{method}" in baselines})
    table = pd.DataFrame(out, columns=ADAPTIVE_COLUMNS[:-1])
    base = table[table["is_baseline"]].set_index("part")["test_mean"]
    table["delta"] = [None if b else t - base.get(p, math.nan) for p, t, b in zip(table["part"], table["test_mean"], table["is_baseline"])]
    return table


def adaptive_comparison(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """``adaptive_table`` of the latest adaptive comparison in ``experiment``; empty when the
    experiment does not exist or holds none (a notebook then says how to make one)."""
    try:
        runs = runs_frame(experiment, tracking_uri)
    except LookupError:
        return adaptive_table(pd.DataFrame())
    return adaptive_table(runs)


def plot_adaptive(table: pd.DataFrame):
    """One panel per part (temperature kinds; weightings): test accuracy mean ± sd per method, the
    part's baseline as a dashed line; green above it, red below, grey level with it.
    ``table``: ``part``, ``method``, ``test_mean``, ``test_sd``, ``is_baseline``, ``delta`` (as adaptive_table)."""
    parts = list(dict.fromkeys(table["part"])) if len(table) else []
    if not parts:
        fig = new_figure()
        fig.add_subplot().text(0.5, 0.5, "no adaptive comparison", ha="center", va="center")
        return fig
    heights = [max(2.0, 0.45 * int((table["part"] == p).sum()) + 1.0) for p in parts]
    fig = new_figure(9, sum(heights) + 0.5)
    axes = fig.subplots(len(parts), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, part in zip(axes, parts):
        rs = table[table["part"] == part].iloc[::-1]
        ys = list(range(len(rs)))
        colors = ["#888888" if b or d is None or abs(d) < 5e-5 else ("#2a9d8f" if d > 0 else "#e76f51")
                  for b, d in zip(rs["is_baseline"], rs["delta"])]
        ax.barh(ys, 100 * rs["test_mean"], xerr=100 * rs["test_sd"], color=colors, capsize=3)
        ax.set_yticks(ys, list(rs["method"]), fontsize=8)
        lo, hi = float((100 * (rs["test_mean"] - rs["test_sd"])).min()), float((100 * (rs["test_mean"] + rs["test_sd"])).max())
        ax.set_xlim(lo - 0.3 * (hi - lo) - 0.5, hi + 0.1 * (hi - lo) + 0.5)
        base = rs[rs["is_baseline"]]
        if len(base):
            ax.axvline(100 * float(base["test_mean"].iloc[0]), color="black", linestyle="--", linewidth=1,
                       label=f"baseline: {base['method'].iloc[0]}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title({"temperature": "temperature kinds (one teacher)", "teachers": "teacher weightings and combination rules"}.get(part, part),
                     fontsize=10)
        ax.set_xlabel("test accuracy (%), mean ± sd over seeds")
        ax.grid(True, axis="x", alpha=0.3)
    return fig
