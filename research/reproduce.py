"""``research reproduce NAME``: a paper's table (teacher, student alone, distilled) over seeds,
beside the published numbers.

A setting is a run config with a ``reproduce:`` section (``studies/reproduce/<name>.yaml``):
the paper, the unit its table is in (``errors``: test errors, a count; ``accuracy``: test
accuracy in %), the published numbers, and the overrides that ``--full`` applies to reach the
paper's own budgets. For each seed ``s`` it trains, through :mod:`research.pipeline`:

- the teacher(s): ``teachers.i.seed + s * len(teachers)``, so seed 0 is the file as written and
  the seeds of an ensemble's members never collide across seeds; with several teachers the
  "teacher" row is their combination (``distill.combine``, ``distill.teacher_weights``),
  evaluated in a run of its own (role ``teacher_ensemble``);
- the student alone (role ``student``, ``baseline_train`` when given);
- the distilled student (role ``distill``).

Every run is a child of one MLflow parent run per setting and budget (tag
``reproduce=<name>``, ``config_hash`` of the resolved setting). Resuming: a student run (role,
seed) that finished under that parent with the same ``config_hash`` is not redone, and a
teacher is reused from any finished run with the same teacher key in the experiment (as
``research distill`` reuses teachers: :func:`research.pipeline.obtain_teachers`).

The table's statistics are the mean and sample standard deviation over seeds
(:func:`research.stats.mean_std`); hyperparameters come from the setting file, chosen on the
validation split; the test split is only reported.
"""

from __future__ import annotations

import contextlib
import csv
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from .config import ConfigError, RunConfig, TeacherConfig, config_hash, flatten
from .config.base import Strict, apply_overrides, parse, read_yaml
from .config.run import check_run_files
from .distill import TeacherLogitCache, teacher_log_probs
from .pipeline import RunResult, Teacher, evaluate_run, load_run_data, obtain_teachers, train_student
from .runs import RunContext, shared_tags, tracked_run
from .stats import mean_std
from .tracking import Tracker

SETTINGS_DIR = Path(__file__).resolve().parents[1] / "studies" / "reproduce"
ROLES = ("teacher", "student", "distill")  # the table's rows, in the paper's order
ROW_LABELS = {"teacher": "teacher", "student": "student alone", "distill": "distilled"}


class Published(Strict):
    """The paper's numbers, in ``ReproduceSection.unit``; None where the paper has none."""

    teacher: float | None = None
    student: float | None = None
    distill: float | None = None


class ReproduceSection(Strict):
    paper: str  # citation, printed above the table
    unit: Literal["errors", "accuracy"]  # errors: test errors (count); accuracy: test accuracy in %
    published: Published
    full: list[str] = Field(default_factory=list)  # KEY=VALUE overrides for the paper's budgets (--full)
    budget: str = ""  # the default budget in words (what it is, measured wall time), for the report


class ReproduceConfig(RunConfig):
    """A run config plus its ``reproduce:`` section."""

    reproduce: ReproduceSection


def available_settings(folder: Path = SETTINGS_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def setting_path(name: str, folder: Path = SETTINGS_DIR) -> Path:
    """``name`` as a file (a path to a YAML) or a shipped setting; ConfigError (one line) if neither."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    p = folder / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"unknown setting {name!r}; available: {', '.join(available_settings(folder)) or '(none)'}")
    return p


def load_setting(name: str, overrides: Sequence[str] = (), *, full: bool = False, folder: Path = SETTINGS_DIR) -> ReproduceConfig:
    """The setting ``name`` validated; ``full`` applies its ``reproduce.full`` overrides first,
    then ``overrides`` (the command line's ``--set``) win. Raises ConfigError."""
    path = setting_path(name, folder)
    raw = read_yaml(path)
    if full:
        section = raw.get("reproduce") if isinstance(raw.get("reproduce"), dict) else {}
        raw = apply_overrides(raw, list(section.get("full") or []))
    raw = apply_overrides(raw, list(overrides))
    raw.setdefault("tracking", {})
    if isinstance(raw["tracking"], dict) and "experiment" not in raw["tracking"]:
        raw["tracking"]["experiment"] = f"reproduce-{raw.get('name', path.stem)}"
    cfg = parse(ReproduceConfig, raw, source=str(path))
    if cfg.student is None or not cfg.teachers or any(t.model is None for t in cfg.teachers):
        raise ConfigError(f"{path}: a reproduction needs a student and teachers trained here (teachers.N.model)")
    check_run_files(cfg)
    return cfg


def seeded(cfg: ReproduceConfig, seed: int) -> ReproduceConfig:
    """``cfg`` for seed ``seed``: teacher i's seed is ``teachers.i.seed + seed * len(teachers)``."""
    k = len(cfg.teachers)
    teachers: list[TeacherConfig] = [t.model_copy(update={"seed": t.seed + seed * k}) for t in cfg.teachers]
    return cfg.model_copy(update={"teachers": teachers, "seed": seed})


class Ensemble(nn.Module):
    """The teachers' combined prediction as one model: log of the (weighted) mean probabilities
    (``combine: probs``), which are valid logits [B, C]; see ``research.distill.teacher_log_probs``."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None, combine: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = list(weights) if weights is not None else None
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return teacher_log_probs([m(x) for m in self.members], 1.0, self.weights, self.combine)


@dataclass
class Outcome:
    """What :func:`reproduce` did: the runs per (role, seed), the parent run, the time spent."""

    cfg: ReproduceConfig
    name: str
    parent_run_id: str
    results: list[RunResult] = field(default_factory=list)
    trained: int = 0  # runs trained in this invocation (0 on a complete resume)
    reused: int = 0
    wall_s: float = 0.0


def _row_value(cfg: ReproduceConfig, metrics: dict[str, float]) -> float:
    """A run's number in the paper's unit: test errors (count) or test accuracy in %."""
    if cfg.reproduce.unit == "errors":
        return float(metrics["test_errors"])
    return 100.0 * float(metrics["test_accuracy"])


def _find_child(tracker: Tracker, cfg: RunConfig, parent: str, role: str, seed: int):
    found = tracker.find_runs(cfg.tracking.experiment, parent_run_id=parent,
                              tags={"role": role, "seed": str(seed), "config_hash": config_hash(cfg)})
    return found[0] if found else None


def _open_parent(tracker: Tracker, cfg: ReproduceConfig, name: str, seeds: Sequence[int]) -> tuple[str, bool]:
    """The parent run of this setting and budget: reopened when one exists (any status), else new."""
    h = config_hash(cfg)
    found = tracker.find_runs(cfg.tracking.experiment, tags={"reproduce": name, "config_hash": h, "role": "reproduce"}, status=None)
    if found:
        return tracker.reopen(found[0].info.run_id).run_id, True
    run = tracker.start(cfg.tracking.experiment, f"reproduce-{name}",
                        tags={"reproduce": name, "config_hash": h, "role": "reproduce", "method": "reproduce",
                              "dataset": cfg.data.dataset, "paper": cfg.reproduce.paper})
    run.log_params({**flatten(cfg.model_dump(mode="json")), "seeds": ",".join(map(str, seeds))})
    run.log_text(_yaml(cfg), "config/resolved.yaml")
    return run.run_id, False


def _yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def reproduce(name: str, cfg: ReproduceConfig, tracker: Tracker, *, seeds: Sequence[int], progress: bool = True,
              config_path: str | Path | None = None) -> Outcome:
    """Train (or find) teacher, student alone and distilled student for each seed under one parent
    run; return every run's metrics. The parent ends FINISHED, or KILLED/FAILED as the error that
    stops it (which propagates)."""
    t0 = time.perf_counter()
    parent, _ = _open_parent(tracker, cfg, name, seeds)
    out = Outcome(cfg, name, parent)
    handle = tracker.handle(parent)
    try:
        data = None
        ctx = RunContext(tracker, parent_run_id=parent, config_path=config_path, progress=progress,
                         cache=TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits"))
        for seed in seeds:
            cs = seeded(cfg, seed)
            done = {role: _find_child(tracker, cs, parent, role, seed) for role in ("student", "distill")}
            ensemble = len(cs.teachers) > 1
            if ensemble:
                done["teacher_ensemble"] = _find_child(tracker, cs, parent, "teacher_ensemble", seed)
            teacher_runs = _finished_teachers(tracker, cs)
            if all(done.values()) and all(teacher_runs):
                out.reused += len(done) + len(teacher_runs)
                out.results.extend(_from_runs(seed, done, teacher_runs, ensemble))
                continue
            if data is None:
                data = load_run_data(cs, progress=progress)
            trained: list[RunResult] = []
            teachers = obtain_teachers(cs, data, tracker, config_path=config_path, parent_run_id=parent, progress=progress,
                                       on_trained=trained.append)
            out.trained += len(trained)
            out.reused += len(teachers) - len(trained)
            out.results.append(_teacher_row(tracker, cs, data, ctx, seed, teachers, done.get("teacher_ensemble"), out))
            for role in ("student", "distill"):
                if done[role] is not None:
                    out.reused += 1
                    out.results.append(RunResult(role, seed, done[role].info.run_id, dict(done[role].data.metrics)))
                    continue
                result = train_student(cs, data, ctx.replace(role=role), seed=seed,
                                       teachers=teachers if role == "distill" else ())
                result.model = None  # not kept: a table needs the numbers only
                out.trained += 1
                out.results.append(result)
        out.wall_s = time.perf_counter() - t0
        _log_summary(handle, out)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):  # the parent must not stay RUNNING; the store's error must not hide the run's
            tracker.end(handle, status)
        raise
    tracker.end(handle, "FINISHED")
    return out


def _finished_teachers(tracker: Tracker, cfg: RunConfig) -> list:
    """For each teacher of ``cfg``: its finished run with the same teacher key (None when none),
    found as :func:`research.pipeline.obtain_teachers` finds it."""
    from .config import teacher_key

    runs = []
    for tc in cfg.teachers:
        found = tracker.find_runs(cfg.tracking.experiment, tags={"teacher_key": teacher_key(tc, cfg.data), "method": "teacher"})
        runs.append(found[0] if found else None)
    return runs


def _from_runs(seed: int, done: dict[str, Any], teacher_runs: list, ensemble: bool) -> list[RunResult]:
    t = done["teacher_ensemble"] if ensemble else teacher_runs[0]
    rows = [RunResult("teacher", seed, t.info.run_id, dict(t.data.metrics))]
    rows += [RunResult(role, seed, done[role].info.run_id, dict(done[role].data.metrics)) for role in ("student", "distill")]
    return rows


def _teacher_row(tracker: Tracker, cfg: ReproduceConfig, data, ctx: RunContext, seed: int, teachers: Sequence[Teacher],
                 found, out: Outcome) -> RunResult:
    """The table's teacher row for ``seed``: the one teacher's run, or the ensemble's evaluation
    (a run of its own, role ``teacher_ensemble``, found again on resume)."""
    if len(teachers) == 1:
        run_id = teachers[0].run_id
        metrics = dict(tracker.get_run(run_id).data.metrics) if run_id else {}
        return RunResult("teacher", seed, run_id, metrics)
    if found is not None:
        out.reused += 1
        return RunResult("teacher", seed, found.info.run_id, dict(found.data.metrics))
    model = Ensemble([t.model for t in teachers], cfg.distill.teacher_weights, cfg.distill.combine).eval()
    tags = shared_tags(cfg, method="teacher_ensemble", role="teacher_ensemble", seed=seed, model="ensemble",
                       teacher_run_ids=[t.run_id for t in teachers])
    with tracked_run(ctx.replace(role="teacher_ensemble"), cfg, name=f"teacher-ensemble-seed{seed}", tags=tags,
                     params={"seed": seed, "members": len(teachers)}) as run:
        metrics = evaluate_run(model, data, cfg, with_deployment=False)
        metrics["params"] = float(sum(p.numel() for p in model.parameters()))
        metrics["train_time_s"] = sum(float(tracker.get_run(t.run_id).data.metrics.get("train_time_s", 0.0)) for t in teachers if t.run_id)
        if run is not None:
            run.log_metrics(metrics)
    out.trained += 1
    return RunResult("teacher", seed, run.run_id if run is not None else None, metrics)


# ---------------------------------------------------------------- the table


def table_rows(out: Outcome) -> list[dict[str, Any]]:
    """One row per role: n, mean and sample sd over seeds in the paper's unit, the published
    number, and the mean train time of a run (s)."""
    cfg = out.cfg
    rows = []
    for role in ROLES:
        group = sorted((r for r in out.results if r.role == role), key=lambda r: r.seed)
        vals = [_row_value(cfg, r.metrics) for r in group]
        val_acc = [100.0 * r.metrics["val_accuracy"] for r in group if "val_accuracy" in r.metrics]
        times = [r.metrics["train_time_s"] for r in group if "train_time_s" in r.metrics]
        m, s = mean_std(vals) if vals else (float("nan"), float("nan"))
        rows.append({
            "row": ROW_LABELS[role], "role": role, "seeds": len(vals), "mean": m, "std": s,
            "published": getattr(cfg.reproduce.published, role),
            "val_accuracy_mean": mean_std(val_acc)[0] if val_acc else float("nan"),
            "params": group[0].metrics.get("params") if group else None,
            "train_s_mean": mean_std(times)[0] if times else float("nan"),
            "per_seed": vals,
        })
    return rows


def _unit_title(cfg: ReproduceConfig) -> str:
    return "test errors (of 10,000)" if cfg.reproduce.unit == "errors" else "test accuracy %"


def _fmt(v: float, unit: str) -> str:
    return f"{v:.1f}" if unit == "errors" else f"{v:.2f}"


def format_table(out: Outcome) -> str:
    """The paper's table as markdown: measured mean ± sd beside the published number."""
    unit = out.cfg.reproduce.unit
    lines = [f"| | {_unit_title(out.cfg)}, mean ± sd | per seed | published | val acc % | params | train s / run |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in table_rows(out):
        pub = "-" if r["published"] is None else (f"{r['published']:.0f}" if unit == "errors" else f"{r['published']:g} %")
        seeds = ", ".join(_fmt(v, unit) for v in r["per_seed"])
        params = "-" if r["params"] is None else f"{r['params']:,.0f}"
        sd = _fmt(r["std"], unit) if r["seeds"] > 1 else "-"  # one seed has no spread to show
        lines.append(f"| {r['row']} | {_fmt(r['mean'], unit)} ± {sd} | {seeds} | {pub} | "
                     f"{r['val_accuracy_mean']:.2f} | {params} | {r['train_s_mean']:.0f} |")
    return "\n".join(lines)


def write_report(out: Outcome, folder: str | Path, *, command: str) -> tuple[Path, Path]:
    """``reproduce-<name>.md`` and ``.csv`` in ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"reproduce-{out.name}.md", folder / f"reproduce-{out.name}.csv"
    cfg = out.cfg
    # An ensemble's teacher row carries its members' summed train time, so this sum counts every run once.
    total_train = sum(r.metrics.get("train_time_s", 0.0) for r in out.results)
    text = [
        f"# Reproduction: {out.name}", "",
        f"- paper: {cfg.reproduce.paper}",
        f"- command: `{command}`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{_cpus()} CPUs, torch {torch.__version__}, torch threads {torch.get_num_threads()}",
        f"- budget: {cfg.reproduce.budget or '(see the setting file)'}",
        f"- this invocation: {out.wall_s / 60:.1f} min wall, {out.trained} runs trained, {out.reused} found done "
        f"(summed train time of the runs in the table: {total_train / 60:.1f} min)",
        f"- MLflow: experiment `{cfg.tracking.experiment}`, parent run `{out.parent_run_id}`",
        "",
        format_table(out), "",
        "sd: sample standard deviation over seeds. Hyperparameters are the setting file's (chosen on the validation "
        "split); the test split is only reported. Published: the paper's single run.",
        "",
    ]
    md.write_text("\n".join(text))
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "unit", "seeds", "mean", "std", "published", "per_seed", "val_accuracy_mean", "params", "train_s_mean"])
        for r in table_rows(out):
            w.writerow([r["row"], cfg.reproduce.unit, r["seeds"], r["mean"], r["std"], r["published"],
                        " ".join(f"{v:g}" for v in r["per_seed"]), r["val_accuracy_mean"], r["params"], r["train_s_mean"]])
    return md, csv_path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _log_summary(handle, out: Outcome) -> None:
    metrics: dict[str, float] = {"wall_time_s": out.wall_s, "runs_trained": float(out.trained)}
    for r in table_rows(out):
        if r["seeds"]:
            metrics[f"{r['role']}_mean"] = r["mean"]
            metrics[f"{r['role']}_std"] = r["std"]
    handle.log_metrics(metrics)
    handle.log_text(format_table(out), "reproduce/table.md")


def log_report(tracker: Tracker, out: Outcome, paths: Sequence[Path]) -> None:
    """Attach the written report files to the parent run (under ``reproduce/``)."""
    handle = tracker.handle(out.parent_run_id)
    for p in paths:
        handle.log_artifact(p, "reproduce")
