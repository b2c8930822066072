"""Several teachers: a study's teachers in weight order, the teachers' weights of each
trial (a simplex for three), and mixing teachers against each teacher alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import new_figure
from .runs import best_trial, drop_empty, fetch_run, with_role


def teachers_of(runs: pd.DataFrame, trials: pd.DataFrame | None = None, tracking_uri: str | None = None) -> pd.DataFrame:
    """The teachers of a study in weight order (``teacher`` 0..K-1): their own runs (tag
    role=teacher) with test accuracy, model and a short ``label``. The order is the trials'
    ``teacher_run_id`` tag; a teacher logged in another experiment is fetched by its id."""
    teachers = with_role(runs, "teacher")
    ids: list[str] = []
    if trials is not None and "teacher_run_id" in trials:
        tagged = trials["teacher_run_id"].dropna()
        if not tagged.empty:
            ids = [i for i in str(tagged.iloc[0]).split(",") if i]
    if not ids:  # no trial yet: the run names say the index (teacher-<k>-<model>)
        order = teachers.assign(_k=teachers["run_name"].str.extract(r"teacher-(\d+)", expand=False).astype(float)).sort_values(["_k", "start_time"])
        ids = list(dict.fromkeys(order.drop_duplicates("_k", keep="last")["run_id"]))
    rows = []
    by_id = teachers.set_index("run_id") if not teachers.empty else None
    for k, run_id in enumerate(ids):
        if by_id is not None and run_id in by_id.index:
            row = by_id.loc[run_id].to_dict()
        else:
            row = fetch_run(run_id, tracking_uri)
        row.update(run_id=run_id, teacher=k)
        rows.append(row)
    t = drop_empty(pd.DataFrame(rows))
    if t.empty:
        return t
    model = t["model"] if "model" in t else pd.Series(["?"] * len(t))
    acc = t["test_accuracy"] if "test_accuracy" in t else pd.Series([np.nan] * len(t))
    t["label"] = [f"T{k}: {m}" + (f" ({a:.3f})" if pd.notna(a) else "") for k, m, a in zip(t["teacher"], model, acc)]
    first = [c for c in ("teacher", "label", "model", "test_accuracy", "val_accuracy", "params", "seed", "run_name", "run_id") if c in t]
    return t[first + [c for c in t.columns if c not in first]]


def dominant_teacher(trials: pd.DataFrame, dominance: float = 0.5) -> pd.Series:
    """The teacher whose weight is at least ``dominance`` in each trial (<NA> when none is)."""
    w = trials[[c for c in trials.columns if str(c).startswith("weight_")]]
    if w.empty:
        return pd.Series(pd.NA, index=trials.index, dtype="Int64")
    top = w.to_numpy(dtype=float)
    k = np.nanargmax(np.nan_to_num(top, nan=-1), axis=1)
    ok = np.take_along_axis(np.nan_to_num(top, nan=-1), k[:, None], axis=1)[:, 0] >= dominance
    return pd.Series(np.where(ok, k, -1), index=trials.index).replace(-1, pd.NA).astype("Int64")


def single_teacher_comparison(trials: pd.DataFrame, teachers: pd.DataFrame, *, objective: str = "val_accuracy",
                              metric: str = "test_accuracy", dominance: float = 0.5) -> pd.DataFrame:
    """Each teacher alone (its own run's test accuracy) against the students distilled
    mostly from it (trials where its weight is at least ``dominance``: their count and the
    best by ``objective``), then the best mixture and the uniform enqueued default."""
    done = trials[trials["state"] == "COMPLETE"].copy()
    done["dominant"] = dominant_teacher(done, dominance)
    rows = []
    for _, t in teachers.iterrows():
        mine = done[done["dominant"] == t["teacher"]]
        best = best_trial(mine, objective) if not mine.empty else None
        rows.append({"row": t.get("label", f"T{t['teacher']}"), "teacher test_accuracy": t.get("test_accuracy"), "trials": len(mine),
                     "best trial": None if best is None else int(best["trial"]), objective: None if best is None else best[objective],
                     metric: None if best is None else best.get(metric),
                     "weights": None if best is None else _weights_text(best)})
    overall = best_trial(done, objective)
    if overall is not None:
        rows.append({"row": "best mixture", "trials": len(done), "best trial": int(overall["trial"]), objective: overall[objective],
                     metric: overall.get(metric), "weights": _weights_text(overall)})
    uniform = done[done["enqueued"]]
    if not uniform.empty:
        u = uniform.iloc[0]
        rows.append({"row": "enqueued default", "trials": 1, "best trial": int(u["trial"]), objective: u[objective], metric: u.get(metric),
                     "weights": _weights_text(u)})
    return pd.DataFrame(rows)


def _weights_text(row: pd.Series) -> str:
    w = [row[c] for c in row.index if str(c).startswith("weight_")]
    return "[" + ", ".join(f"{float(v):.2f}" for v in w) + "]"


def _simplex_xy(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> Cartesian: corners T0 (0, 0), T1 (1, 0), T2 (1/2, sqrt(3)/2)."""
    return w[:, 1] + 0.5 * w[:, 2], (np.sqrt(3) / 2) * w[:, 2]


def plot_weight_simplex(trials: pd.DataFrame, metric: str = "val_accuracy", teachers: pd.DataFrame | None = None, direction: str = "maximize"):
    """Three teachers: each trial as a point on the weight triangle (a corner = that
    teacher alone, the centre = uniform), coloured by the metric; best starred, enqueued boxed."""
    from matplotlib.tri import Triangulation

    wcols = [c for c in trials.columns if str(c).startswith("weight_")]
    if len(wcols) != 3:
        raise ValueError(f"a simplex view needs three teachers' weights, these trials have {len(wcols)}; use plot_teacher_weights")
    fig = new_figure(7, 6.2)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[*wcols, metric])
    w = done[wcols].to_numpy(dtype=float)
    x, y = _simplex_xy(w)
    z = done[metric].to_numpy(dtype=float)
    corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], color="black", lw=1)
    for frac in (0.25, 0.5, 0.75):  # grid lines of constant weight
        for k in range(3):
            a = np.zeros((2, 3))
            a[:, k] = frac
            others = [j for j in range(3) if j != k]
            a[0, others[0]], a[1, others[1]] = 1 - frac, 1 - frac
            gx, gy = _simplex_xy(a)
            ax.plot(gx, gy, color="lightgrey", lw=0.6, zorder=0)
    vmin, vmax = (float(z.min()), float(z.max())) if len(z) else (0, 1)
    if len(done) >= 6:  # fewer points make slivers, not a map
        try:
            ax.tricontourf(Triangulation(x, y), z, levels=12, cmap="viridis", alpha=0.35, vmin=vmin, vmax=vmax)
        except (ValueError, RuntimeError):
            pass
    sc = ax.scatter(x, y, c=z, cmap="viridis", vmin=vmin, vmax=vmax, s=60, edgecolors="white", linewidths=0.8, zorder=3)
    fig.colorbar(sc, ax=ax, label=metric, shrink=0.8)
    enq = done["enqueued"].to_numpy(dtype=bool)
    if enq.any():
        ax.scatter(x[enq], y[enq], marker="s", s=150, facecolors="none", edgecolors="black", linewidths=1.2, label="enqueued default", zorder=4)
    best = best_trial(done, metric, direction)
    if best is not None:
        bx, by = _simplex_xy(np.array([[float(best[c]) for c in wcols]]))
        ax.scatter(bx, by, marker="*", s=320, color="red", edgecolors="black", zorder=5,
                   label=f"best: trial {int(best['trial'])} ({float(best[metric]):.4f}) {_weights_text(best)}")
    names = list(teachers["label"]) if teachers is not None and "label" in teachers and len(teachers) == 3 else [f"T{k}" for k in range(3)]
    for (cx, cy), name, (dx, dy, ha) in zip(corners[:3], names, ((-0.02, -0.06, "left"), (0.02, -0.06, "right"), (0, 0.03, "center"))):
        ax.text(cx + dx, cy + dy, name, ha=ha, fontsize=9, weight="bold")
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.12, 0.98)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{metric} over the teachers' weights\n(a corner: that teacher alone; the centre: uniform)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", fontsize=8, ncols=1)
    return fig


def plot_teacher_weights(trials: pd.DataFrame, metric: str = "val_accuracy", teachers: pd.DataFrame | None = None):
    """Any number of teachers: the metric against each teacher's weight (one panel each).
    Three teachers get the simplex view (``plot_weight_simplex``)."""
    wcols = [c for c in trials.columns if str(c).startswith("weight_")]
    if len(wcols) == 3:
        return plot_weight_simplex(trials, metric, teachers)
    fig = new_figure(4 * max(1, len(wcols)), 4)
    done = trials[trials["state"] == "COMPLETE"]
    axes = fig.subplots(1, max(1, len(wcols)), squeeze=False)[0]
    for k, (ax, c) in enumerate(zip(axes, wcols)):
        ax.scatter(done[c], done[metric], c=done[metric], cmap="viridis")
        name = teachers["label"].iloc[k] if teachers is not None and "label" in teachers and k < len(teachers) else f"T{k}"
        ax.set_xlabel(f"weight of {name}")
        ax.set_ylabel(metric)
    if not wcols:
        axes[0].text(0.5, 0.5, "no teacher weights were searched", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    return fig


def plot_vs_single_teacher(trials: pd.DataFrame, teachers: pd.DataFrame, *, metric: str = "test_accuracy", dominance: float = 0.5):
    """Per teacher: its own accuracy (bar) and the students distilled mostly from it
    (points: trials where its weight >= ``dominance``); lines: the best mixture (by
    validation accuracy) and the uniform enqueued default."""
    fig = new_figure(7.5, 5.2)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].copy()
    done["dominant"] = dominant_teacher(done, dominance)
    xs = np.arange(len(teachers))
    own = teachers["test_accuracy"].astype(float) if "test_accuracy" in teachers else pd.Series(np.nan, index=teachers.index)
    ax.bar(xs, own, width=0.55, color="lightsteelblue", edgecolor="steelblue", label="teacher alone (its own run)")
    rng = np.random.default_rng(0)
    counts: list[int] = []
    for i, k in enumerate(teachers["teacher"]):
        mine = done.loc[done["dominant"] == k, metric].dropna() if metric in done else pd.Series(dtype=float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(mine)), mine, color="tab:orange", edgecolors="black", zorder=3,
                   label=f"student, weight >= {dominance:g} on that teacher" if i == 0 else None)
        counts.append(len(mine))
    best = best_trial(done)
    if best is not None and metric in best:
        ax.axhline(float(best[metric]), color="tab:red", lw=1.5, label=f"best mixture, trial {int(best['trial'])} {_weights_text(best)}")
    uniform = done[done["enqueued"]]
    if not uniform.empty and metric in uniform:
        ax.axhline(float(uniform[metric].iloc[0]), color="black", ls="--", lw=1, label="uniform weights (enqueued)")
    labels = teachers["label"] if "label" in teachers else [f"T{k}" for k in teachers["teacher"]]
    ax.set_xticks(xs, [f"{name}\n{n} trial{'s' if n != 1 else ''} >= {dominance:g}" for name, n in zip(labels, counts)], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("mixing teachers against a single teacher")
    fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return fig

