"""One study: the markdown report of `research study report`, the tables and plots of
notebook 01 (trials, best against the enqueued defaults, finalized test figures), and
the figures `research study report` takes from MLflow.

``study_markdown`` takes the plain rows of ``sweep.trials_table``; every other function
takes the frames of ``runs`` (``trials_of``, ``study_run_of``, ``final_runs_of``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..stats import best_first, best_of, direction_sign, format_mean_std, format_state_counts, mean_std, paired_sentence, state_counts
from .figures import new_figure
from .runs import best_trial, final_runs_of, runs_frame, study_run_of, trials_of
from .tables import markdown_table
from .teachers import plot_teacher_weights, plot_vs_single_teacher, teachers_of


def _param_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r.get("params", {}):
            if k not in names and not k.startswith("w_"):
                names.append(k)
    return names


def flatten_trial_rows(rows: Sequence[dict[str, Any]], objective_names: Sequence[str]) -> list[dict[str, Any]]:
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("params", "values")}
        f.update(r.get("params", {}))
        for name, v in zip(objective_names, r.get("values") or []):
            f[name] = v
        flat.append(f)
    return flat


def kind_groups(complete: Sequence[dict[str, Any]], params: Sequence[str], objective: str, direction: str) -> list[dict[str, Any]]:
    """One row per value of every searched ``*.kind`` parameter (a temperature or weighting kind):
    how many completed trials drew it, their best and mean ``objective``, and the best one's number;
    rows of one parameter best kind first (``stats.best_first``)."""
    rows = []
    for p in (p for p in params if p.endswith(".kind")):
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in complete:
            if r.get(p) is not None and r.get(objective) is not None:
                groups.setdefault(r[p], []).append(r)
        for kind, rs in groups.items():
            best = best_of(rs, value=lambda r: r[objective], number=lambda r: r["number"], direction=direction)
            rows.append({"searched": p, "kind": kind, "trials": len(rs), "best": best[objective],
                         "mean": mean_std(r[objective] for r in rs)[0], "best_trial": best["number"]})
    sign = direction_sign(direction)
    return sorted(rows, key=lambda r: (r["searched"], sign * r["best"], r["best_trial"]))


def trials_by_kind(trials: pd.DataFrame, objective: str = "val_accuracy", direction: str = "maximize") -> pd.DataFrame:
    """The trial frame of ``runs.trials_of`` grouped by every temperature or weighting kind that
    varied among its completed trials (a ``...kind`` column, from the trial's logged config):
    one row per kind with its trial count, best and mean ``objective`` and best trial
    (``kind_groups``). Empty, with those columns, when the study searched no kind."""
    columns = ["searched", "kind", "trials", "best", "mean", "best_trial"]
    if trials.empty or objective not in trials or "state" not in trials:
        return pd.DataFrame(columns=columns)
    done = trials[(trials["state"] == "COMPLETE") & trials[objective].notna()]
    searched = [c for c in done.columns if str(c).endswith(".kind") and done[c].nunique(dropna=True) > 1]
    rows = [{**r, "number": int(r["trial"])} for r in done.to_dict("records")]
    return pd.DataFrame(kind_groups(rows, searched, objective, direction), columns=columns)


def study_markdown(
    name: str,
    rows: Sequence[dict[str, Any]],
    *,
    objective_names: Sequence[str],
    directions: Sequence[str],
    parent_metrics: dict[str, float],
    figure_files: Sequence[Path] = (),
    settings: dict[str, Any] | None = None,
    best_trial: int | None = None,
    test_direction: str = "maximize",
    test_metric: str = "test_accuracy",
) -> str:
    """The study report: settings, best vs enqueued defaults, finalized test figures, all trials, plots.
    ``rows``: ``sweep.trials_table``; ``parent_metrics``: the study run's metrics (``final_<config>_*``
    from ``research study finalize``, and its paired comparison ``final_paired_*``, said in one
    sentence under the finalized table). ``best_trial``: the study's chosen best (sweep.best_trials; on
    the Pareto front when several objectives); default: the best by the first objective.
    ``test_direction``: which way the finalized test metric is better (the task's); ``test_metric``: that
    metric (``sweep.final_metric``: test_accuracy, or test_wer for the g2p task)."""
    flat = flatten_trial_rows(rows, objective_names)
    test_label = test_metric.replace("_", " ", 1)  # "test accuracy", "test wer"
    params = _param_columns(rows)
    obj = objective_names[0]
    complete = [r for r in flat if r["state"] == "COMPLETE"]
    ranked = best_first(complete, value=lambda r: r[obj], number=lambda r: r["number"], direction=directions[0],
                        preferred=() if best_trial is None else (best_trial,))
    lines = [f"# Study `{name}`", ""]
    if settings:
        lines += [", ".join(f"{k}: {v}" for k, v in settings.items()), ""]
    lines += [f"Trials: {len(flat)} ({format_state_counts(state_counts(r['state'] for r in flat))}).", ""]

    cols = [("number", "trial"), *[(p, p) for p in params], ("teacher_weights", "teacher weights"),
            *[(o, o) for o in objective_names], (test_metric, f"{test_label} (not used to select)"), ("duration_s", "seconds")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in flat)]
    if ranked:
        best = dict(ranked[0], label="best")
        defaults = [dict(r, label="enqueued default") for r in flat if r.get("enqueued") and r["state"] == "COMPLETE"]
        lines += ["## Best trial against the enqueued defaults", "",
                  markdown_table([best, *defaults], [("label", ""), *cols]), ""]
    final = finalized(pd.Series(parent_metrics, dtype=float), metric=test_metric)
    if not final.empty:
        frows = [{"config": f["config"], "trial": int(f["trial"]), "seeds": int(f["seeds"]),
                  test_label: format_mean_std(f[f"{test_metric}_mean"], f[f"{test_metric}_std"], scale=100, unit=" %")}
                 for f in final.to_dict("records")]
        lines += ["## Finalized on the whole training split (test set, mean ± std over seeds)", "",
                  markdown_table(frows, [("config", "config"), ("trial", "from trial"), ("seeds", "seeds"), (test_label, test_label)]), ""]
        paired = {k.removeprefix("final_paired_"): v for k, v in parent_metrics.items() if k.startswith("final_paired_")}
        sentence = paired_sentence(paired, direction=test_direction)
        if sentence:  # best and default on the same seeds: the paired difference says whether the search bought anything
            lines += [f"Paired over seeds, {test_label}: {sentence}.", ""]
    kinds = kind_groups(complete, params, obj, directions[0])
    if kinds:
        lines += ["## Completed trials by kind", "", markdown_table(kinds, [("searched", "searched"), ("kind", "kind"), ("trials", "trials"),
                                                                        ("best", f"best {obj}"), ("mean", f"mean {obj}"), ("best_trial", "best trial")]), ""]
    lines += ["## All trials", "", markdown_table(sorted(flat, key=lambda r: r["number"]), [*cols[:1], ("state", "state"), *cols[1:], ("run_id", "MLflow run")]), ""]
    if figure_files:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figure_files] + [""]
    return "\n".join(lines)


def trials_overview(trials: pd.DataFrame, objective: str = "val_accuracy") -> pd.DataFrame:
    """The table of trials: number, state, enqueued, searched values, objective, test accuracy, seconds."""
    searched = [c for c in trials.columns if c in ("temperature", "alpha") or str(c).startswith("weight_")]
    searched += [c for c in trials.columns if str(c).startswith("trial.") and not str(c).startswith("trial.w_")
                 and str(c).removeprefix("trial.") not in ("temperature", "alpha")]
    cols = ["trial", "state", "enqueued", *searched, objective, "test_accuracy", "duration_s", "run_id"]
    return trials[[c for c in dict.fromkeys(cols) if c in trials]].reset_index(drop=True)


def best_vs_defaults(trials: pd.DataFrame, objective: str = "val_accuracy", direction: str = "maximize") -> pd.DataFrame:
    """The best completed trial and every enqueued default (published settings), with
    the objective and test accuracy, and the objective's gap to the best."""
    best = best_trial(trials, objective, direction)
    if best is None:
        return pd.DataFrame()
    defaults = trials[trials["enqueued"] & (trials["state"] == "COMPLETE")]
    rows = pd.concat([trials.loc[[best.name]].assign(label="best"), defaults.assign(label="enqueued default")], ignore_index=True)
    table = trials_overview(rows, objective)
    table.insert(0, "label", rows["label"])
    table[f"{objective} vs best"] = pd.to_numeric(table[objective]) - float(best[objective])
    return table.drop(columns=["run_id"], errors="ignore")


def finalized(study_run: pd.Series | None, final_runs: pd.DataFrame | None = None, metric: str = "test_accuracy") -> pd.DataFrame:
    """`research study finalize` results from the parent run's ``final_<config>_*`` metrics:
    config, from trial, seeds, ``<metric>_mean`` and ``<metric>_std`` (empty when not
    finalized). ``metric``: the task's finalized test metric (test_accuracy; test_wer for g2p)."""
    mean_col, std_col = f"{metric}_mean", f"{metric}_std"
    if study_run is None:
        return pd.DataFrame(columns=["config", "trial", "seeds", mean_col, std_col])
    configs = sorted({m.group(1) for k in study_run.index if (m := re.fullmatch(rf"final_(.+)_{re.escape(metric)}_mean", str(k)))},
                     key=lambda c: (c != "best", c))
    rows = []
    for c in configs:
        row = {"config": c, "trial": study_run.get(f"final_{c}_trial"), "seeds": study_run.get(f"final_{c}_seeds"),
               mean_col: study_run[f"final_{c}_{mean_col}"], std_col: study_run.get(f"final_{c}_{std_col}")}
        if final_runs is not None and not final_runs.empty and metric in final_runs:
            accs = final_runs.loc[final_runs["config"] == c, metric].dropna()
            row["per_seed"] = [round(float(a), 4) for a in accs]
        rows.append(row)
    out = pd.DataFrame(rows, columns=["config", "trial", "seeds", mean_col, std_col, *(["per_seed"] if rows and "per_seed" in rows[0] else [])])
    for c in ("trial", "seeds"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


def plot_temperature_alpha(trials: pd.DataFrame, metric: str = "val_accuracy", direction: str = "maximize"):
    """The metric over temperature (log axis) and alpha: completed trials coloured by the
    metric, interpolated between them when there are enough, enqueued defaults boxed,
    the best starred, pruned or failed trials as grey crosses."""
    from matplotlib.tri import Triangulation

    fig = new_figure()
    ax = fig.add_subplot()
    if not {"temperature", "alpha", metric} <= set(trials.columns):
        ax.text(0.5, 0.5, "temperature and alpha were not both searched", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=["temperature", "alpha", metric])
    other = trials[trials["state"] != "COMPLETE"].dropna(subset=["temperature", "alpha"])
    x, y, z = np.log10(done["temperature"].astype(float)), done["alpha"].astype(float), done[metric].astype(float)
    vmin, vmax = (float(z.min()), float(z.max())) if len(z) else (0, 1)
    if len(done) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        try:
            ax.tricontourf(Triangulation(x, y), z, levels=12, cmap="viridis", alpha=0.35, vmin=vmin, vmax=vmax)
        except (ValueError, RuntimeError):  # degenerate (collinear) points
            pass
    sc = ax.scatter(x, y, c=z, cmap="viridis", vmin=vmin, vmax=vmax, s=60, edgecolors="white", linewidths=0.8, zorder=3)
    fig.colorbar(sc, ax=ax, label=metric)
    if not other.empty:
        ax.scatter(np.log10(other["temperature"].astype(float)), other["alpha"], marker="x", color="grey", label="pruned / failed", zorder=3)
    enq = done[done["enqueued"]]
    if not enq.empty:
        ax.scatter(np.log10(enq["temperature"].astype(float)), enq["alpha"], marker="s", s=150, facecolors="none", edgecolors="black",
                   linewidths=1.2, label="enqueued default", zorder=4)
    best = best_trial(trials, metric, direction)
    if best is not None:
        ax.scatter([np.log10(float(best["temperature"]))], [float(best["alpha"])], marker="*", s=320, color="red", edgecolors="black",
                   label=f"best: trial {int(best['trial'])} ({float(best[metric]):.4f})", zorder=5)
    for _, r in done.iterrows():
        ax.annotate(str(int(r["trial"])), (np.log10(float(r["temperature"])), float(r["alpha"])), xytext=(4, 4), textcoords="offset points", fontsize=7)
    allx = np.log10(trials["temperature"].dropna().astype(float))
    lo, hi = (float(allx.min()), float(allx.max())) if len(allx) else (0.0, np.log10(20))
    pad = max(0.05, 0.06 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    nice = np.array([1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 40, 50, 100])
    inside = nice[(np.log10(nice) >= lo - pad) & (np.log10(nice) <= hi + pad)]
    ticks = inside[:: max(1, len(inside) // 8)] if len(inside) >= 2 else nice[(nice >= 10 ** (lo - 1)) & (nice <= 10 ** (hi + 1))]
    ax.set_xticks(np.log10(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("alpha (weight of the hard-label loss)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{metric} over temperature and alpha ({len(done)} completed trials)")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_trial_history(trials: pd.DataFrame, metric: str = "val_accuracy", direction: str = "maximize"):
    """The metric of every trial in order, the best so far, the enqueued defaults marked,
    and the test accuracy (reported, not used to select)."""
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[metric]) if metric in trials else trials.iloc[0:0]
    if not done.empty:
        ax.plot(done["trial"].astype(int), done[metric], "o", color="tab:blue", label=metric)
        sign = direction_sign(direction)
        run_best = sign * (sign * done[metric]).cummin()  # the best so far: a running max when maximising
        ax.step(done["trial"].astype(int), run_best, where="post", color="tab:red", label="best so far")
        if "test_accuracy" in done:
            ax.plot(done["trial"].astype(int), done["test_accuracy"], ".", color="grey", alpha=0.7, label="test accuracy (not used to select)")
        enq = done[done["enqueued"]]
        ax.scatter(enq["trial"].astype(int), enq[metric], marker="s", s=120, facecolors="none", edgecolors="black", label="enqueued default")
    other = trials[trials["state"] != "COMPLETE"]
    for _, r in other.iterrows():
        ax.axvline(int(r["trial"]), color="lightgrey", lw=1, zorder=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("trials in order" + (f" (grey lines: {len(other)} pruned or failed)" if len(other) else ""))
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_finalized(final: pd.DataFrame, final_runs: pd.DataFrame | None = None, metric: str = "test_accuracy"):
    """The test metric (``finalized``'s ``metric``) of the finalized configurations: mean ± std over seeds, and each seed."""
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    if final.empty:
        ax.text(0.5, 0.5, "not finalized yet:\nresearch study finalize NAME --seeds 3", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    xs = np.arange(len(final))
    ax.errorbar(xs, final[f"{metric}_mean"], yerr=final[f"{metric}_std"].fillna(0), fmt="o", capsize=8, ms=9, color="tab:blue",
                label="mean ± std over seeds")
    if final_runs is not None and not final_runs.empty and metric in final_runs:
        for i, c in enumerate(final["config"]):
            accs = final_runs.loc[final_runs["config"] == c, metric].dropna()
            ax.plot(np.full(len(accs), i + 0.12), accs, ".", color="grey", label="one seed" if i == 0 else None)
    for i, r in final.iterrows():
        ax.annotate(format_mean_std(r[f"{metric}_mean"], r[f"{metric}_std"], scale=100, unit=" %"), (i, r[f"{metric}_mean"]),
                    xytext=(14, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_xticks(xs, [f"{c}\n(trial {t})" for c, t in zip(final["config"], final["trial"])])
    ax.set_xlim(-0.6, len(final) - 0.2)
    ax.set_ylabel(metric.replace("_", " ", 1))
    ax.set_title("finalized on train+val, evaluated on the test split")
    ax.legend(loc="best", fontsize=8)
    return fig


def study_run_figures(experiment: str, tracking_uri: str | None = None, *, objective: str = "val_accuracy",
                      direction: str = "maximize", test_metric: str = "test_accuracy") -> dict[str, Any]:
    """The notebooks' study figures, from MLflow, for ``research study report``:
    trials in order, the T x alpha map, the finalized ``test_metric``, and for several
    teachers the weight view and the single-teacher comparison (each only when it applies)."""
    runs = runs_frame(experiment, tracking_uri)
    trials = trials_of(runs)
    figs: dict[str, Any] = {}
    if trials.empty:
        return figs
    figs["trials_history"] = plot_trial_history(trials, objective, direction)
    if {"temperature", "alpha"} <= set(trials.columns):
        figs["trials_temperature_alpha"] = plot_temperature_alpha(trials, objective, direction)
    final = finalized(study_run_of(runs), final_runs_of(runs), metric=test_metric)
    if not final.empty:
        figs[f"finalized_{test_metric}"] = plot_finalized(final, final_runs_of(runs), metric=test_metric)
    if any(str(c).startswith("weight_") for c in trials.columns):
        teachers = teachers_of(runs, trials, tracking_uri)
        figs["teacher_weights"] = plot_teacher_weights(trials, objective, teachers)
        if not teachers.empty:
            figs["vs_single_teacher"] = plot_vs_single_teacher(trials, teachers)
    return figs

