"""Tracked runs as pandas frames: an experiment's runs with readable columns, its trial
runs, the study's parent run and the finalized runs, and the best trial of a frame.

MLflow is reached through ``research.tracking`` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..stats import best_of

TRIAL_STATES = {"FINISHED": "COMPLETE", "KILLED": "PRUNED", "FAILED": "FAIL", "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}
_KEEP_MLFLOW_TAGS = {"mlflow.runName": "run_name", "mlflow.parentRunId": "parent_run_id", "mlflow.source.git.commit": "git_commit"}
_BOOLS = {"True": True, "False": False, "true": True, "false": False}
_NUMERIC_TAGS = {"trial_number", "seed", "best_trial", "from_trial", "budget"}
# The run's own seed is its tag; the ``seed`` param can be the config's seed.
_TAG_WINS = {"seed"}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking store to read: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``,
    else the nearest ``mlruns/mlflow.db`` at or above the working directory (a
    notebook runs in ``notebooks/``), else the project's ``sqlite:///mlruns/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        db = folder / "mlruns" / "mlflow.db"
        if db.is_file():
            return f"sqlite:///{db}"
    return f"sqlite:///{Path(__file__).resolve().parents[2] / 'mlruns' / 'mlflow.db'}"


def _tracker(uri: str | None):
    from ..tracking import Tracker

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no tracking store at {uri} (run a study first, or pass tracking_uri)")
    return Tracker(uri)


def _convert(col: pd.Series, *, numeric: bool = True) -> pd.Series:
    """Strings from MLflow params/tags back to booleans or numbers when the whole column is."""
    values = col.dropna()
    if values.empty:
        return col
    text = values.astype(str)
    if text.isin(list(_BOOLS)).all():
        return col.map(lambda v: _BOOLS.get(str(v), v) if isinstance(v, str) else v)
    if numeric:
        text = text.replace("None", None).dropna()
        try:
            pd.to_numeric(text)
        except (TypeError, ValueError):
            return col
        return pd.to_numeric(col.replace("None", None), errors="coerce")
    return col


def clean_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """A frame from ``mlflow.search_runs`` with readable columns: ``metrics.x``, ``params.x``
    and ``tags.x`` become ``x`` (metrics win a name clash, then params; the loser keeps its
    prefix), numbers and booleans logged as strings become numbers and booleans,
    MLflow's own tags are dropped except ``run_name``, ``parent_run_id`` and ``git_commit``,
    and ``duration_s`` is added."""
    df = raw.copy()
    out = pd.DataFrame(index=df.index)
    for col in ("run_id", "experiment_id", "status", "start_time", "end_time", "artifact_uri"):
        if col in df:
            out[col] = df[col]
    for tag, name in _KEEP_MLFLOW_TAGS.items():
        out[name] = df[f"tags.{tag}"] if f"tags.{tag}" in df else None
    if "start_time" in df and "end_time" in df:
        out["duration_s"] = (pd.to_datetime(df["end_time"]) - pd.to_datetime(df["start_time"])).dt.total_seconds()
    columns: dict[str, pd.Series] = {}
    for prefix in ("metrics.", "params.", "tags."):
        for col in [c for c in df.columns if c.startswith(prefix)]:
            key = col[len(prefix):]
            if prefix == "tags." and key.startswith("mlflow."):
                continue
            taken = key in columns or key in out.columns or (prefix == "params." and key in _TAG_WINS and f"tags.{key}" in df)
            name = col if taken else key
            series = df[col]
            columns[name] = series if prefix == "metrics." else _convert(series, numeric=prefix == "params." or key in _NUMERIC_TAGS)
    return pd.concat([out, pd.DataFrame(columns, index=df.index)], axis=1)


def runs_frame(experiment: str, tracking_uri: str | None = None, *, filter_string: str = "") -> pd.DataFrame:
    """Every run of ``experiment`` (MLflow search syntax in ``filter_string``), cleaned by ``clean_runs``."""
    tracker = _tracker(tracking_uri)
    if tracker.experiment_id(experiment, create=False) is None:
        known = ", ".join(sorted(e.name for e in tracker.client.search_experiments())) or "none"
        from ..tracking import mask_url

        raise LookupError(f"no MLflow experiment named {experiment!r} in {mask_url(tracker.uri)} (experiments there: {known})")
    return clean_runs(tracker.search_runs_frame(experiment, filter_string))


def drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """The frame without its all-missing columns."""
    return df.dropna(axis=1, how="all")


def with_role(runs: pd.DataFrame, *roles: str) -> pd.DataFrame:
    """The runs whose ``role`` tag is one of ``roles`` (none when no run has a role)."""
    if "role" not in runs:
        return runs.iloc[0:0]
    return runs[runs["role"].isin(roles)]


def teacher_weights(frame: pd.DataFrame) -> pd.DataFrame:
    """The teachers' weights of each run, normalised onto the simplex: columns
    ``weight_0 .. weight_{K-1}`` (empty when the runs have no searched weights).
    Read from ``distill.teacher_weights.k`` (the logged, normalised config), else a
    ``distill.teacher_weights`` string like "[0.2, 0.5, 0.3]", else Optuna's ``trial.w_k``."""
    cols = sorted((c for c in frame.columns if re.fullmatch(r"distill\.teacher_weights\.\d+", str(c))), key=lambda c: int(c.rsplit(".", 1)[1]))
    if cols:
        w = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    elif "distill.teacher_weights" in frame and frame["distill.teacher_weights"].map(_parse_list).notna().any():
        lists = frame["distill.teacher_weights"].map(_parse_list)
        k = max(len(v) for v in lists.dropna())
        w = np.array([v if v is not None and len(v) == k else [np.nan] * k for v in lists], dtype=float)
    else:
        raw = sorted((c for c in frame.columns if re.fullmatch(r"trial\.w_\d+", str(c))), key=lambda c: int(c.rsplit("_", 1)[1]))
        if not raw:
            return pd.DataFrame(index=frame.index)
        w = frame[raw].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / w.sum(axis=1, keepdims=True)
    return pd.DataFrame(w, index=frame.index, columns=[f"weight_{k}" for k in range(w.shape[1])])


def _parse_list(v: Any) -> list[float] | None:
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    if not isinstance(v, str) or not v.strip().startswith("["):
        return None
    try:
        return [float(x) for x in v.strip()[1:-1].split(",") if x.strip()]
    except ValueError:
        return None


def trials_of(runs: pd.DataFrame) -> pd.DataFrame:
    """The trial runs (tag role=trial) of a cleaned runs frame, one row per trial in trial
    order: ``trial``, ``state`` (Optuna's: COMPLETE, PRUNED, FAIL), ``enqueued``,
    ``temperature``, ``alpha``, ``weight_k`` when searched, then every metric and param."""
    t = drop_empty(with_role(runs, "trial")).copy()
    if t.empty:
        return t
    t["trial"] = pd.to_numeric(t.get("trial_number"), errors="coerce").astype("Int64")
    state = t["status"].map(TRIAL_STATES).fillna(t["status"])
    if "optuna_state" in t:  # set by the study for trials that failed before their run ended
        state = t["optuna_state"].where(t["optuna_state"].notna(), state)
    t["state"] = state
    t["enqueued"] = t["enqueued"].fillna(False).astype(bool) if "enqueued" in t else False
    for name in ("temperature", "alpha"):
        if f"distill.{name}" in t and name not in t:
            t[name] = pd.to_numeric(t[f"distill.{name}"], errors="coerce")
    weights = teacher_weights(t)
    t = pd.concat([t.drop(columns=[c for c in weights.columns if c in t]), weights], axis=1)
    first = ["trial", "run_name", "state", "enqueued", "temperature", "alpha", *weights.columns]
    first = [c for c in first if c in t]
    return t[first + [c for c in t.columns if c not in first]].sort_values("trial").reset_index(drop=True)


def trial_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The trial runs of a study's experiment, cleaned (see ``trials_of``)."""
    return trials_of(runs_frame(experiment, tracking_uri))


def study_run_of(runs: pd.DataFrame) -> pd.Series | None:
    """The study's parent run (tag role=study): best trial, final_* test metrics; the latest if several."""
    parents = with_role(runs, "study")
    if parents.empty:
        return None
    return drop_empty(parents.sort_values("start_time")).iloc[-1]


def final_runs_of(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``research study finalize``: roles final_best, final_default, ... with a ``config`` column."""
    if "role" not in runs:
        return runs.iloc[0:0]
    f = runs[runs["role"].astype(str).str.startswith("final_")]
    if f.empty:
        return f.assign(config=pd.Series(dtype=str))
    f = drop_empty(f).copy()
    f["config"] = f["role"].str.removeprefix("final_")
    return f.reset_index(drop=True)


def best_trial(trials: pd.DataFrame, objective: str = "val_accuracy", direction: str = "maximize") -> pd.Series | None:
    """The best completed trial (a row of ``trials_of``) by ``objective`` in ``direction``, the
    lowest trial number on a tie (``stats.best_first``, the order ``sweep.best_trials`` uses for
    Optuna's trials), or None. One objective: a frame does not carry a study's Pareto front."""
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective]) if objective in trials and not trials.empty else trials.iloc[0:0]
    index = best_of(list(done.index), value=lambda i: float(done.at[i, objective]), number=lambda i: int(done.at[i, "trial"]), direction=direction)
    return None if index is None else done.loc[index]


def fetch_run(run_id: str, tracking_uri: str | None) -> dict[str, Any]:
    """One run by its id, as a row of ``clean_runs`` (a dict); {} when the store does not have it."""
    try:
        run = _tracker(tracking_uri).get_run(run_id)
    except Exception:  # deleted, or in another store
        return {}
    raw = {**{f"metrics.{k}": v for k, v in run.data.metrics.items()}, **{f"params.{k}": v for k, v in run.data.params.items()},
           **{f"tags.{k}": v for k, v in run.data.tags.items()}, "run_id": run_id, "status": run.info.status}
    return clean_runs(pd.DataFrame([raw])).iloc[0].to_dict()
