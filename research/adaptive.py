"""Adaptive temperatures and teacher weightings against their fixed baselines, on one task.

A comparison file is a run config (data, teachers, student, training, the
base ``distill`` settings) plus an ``adaptive:`` section. Everything runs with
the same student, budget and transfer set; hyperparameters are chosen on the
validation split by the runs of ``select_seed``; the table reports the test
split as mean ± sd over ``seeds``.

Part 1, temperature, one teacher (``teachers[0]``):
  - ``fixed`` at T* = the best of ``fixed_temperatures`` on validation;
  - each entry of ``temperature_methods``: its candidates (distill overrides,
    e.g. a kind and its knobs) are tried, the best on validation is kept.
Part 2, weighting, all teachers, at T*:
  - the best single teacher (each teacher alone, chosen on validation);
  - the uniform ensemble (fixed uniform weights, ``combine: probs``);
  - searched fixed weights: the uniform point and ``weight_points`` points
    drawn uniformly on the simplex (seeded), the best on validation;
  - each entry of ``teacher_methods`` (a weighting kind and a combination rule).

Every run is an MLflow child run of one parent run (tags ``method``,
``part``); the table (markdown) and the chart (PNG) go to a folder and onto
the parent run. A run whose config and seed were already trained (the
selection seed of a chosen candidate, teacher 0 alone at T*) is reused,
not retrained.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from .config import ConfigError, DistillConfig, RunConfig, Strict, load_named, parse
from .distill import TeacherLogitCache
from .pipeline import RunContext, load_run_data, obtain_teachers, train_student
from .report import figures_to_files, markdown_table, plot_adaptive
from .stats import format_mean_std, mean_std
from .tracking import Tracker


class TemperatureMethod(Strict):
    label: str
    candidates: list[dict[str, Any]] = Field(min_length=1)  # distill overrides; the best on validation is kept


class TeacherMethod(Strict):
    label: str
    distill: dict[str, Any] = Field(default_factory=dict)  # distill overrides, e.g. {weighting: {kind: ca_mkd}, combine: kl_sum}


class AdaptiveSpec(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    select_seed: int = 0  # the runs that choose on validation (one of seeds: those runs are reused)
    fixed_temperatures: list[float] = Field(min_length=1)
    temperature_methods: list[TemperatureMethod] = Field(default_factory=list)
    weight_points: int = Field(8, ge=0)  # random simplex points of the fixed-weight search, besides uniform
    teacher_methods: list[TeacherMethod] = Field(default_factory=list)
    budget_minutes: float | None = None  # what the file promises on the machine it names (stated, not enforced)

    @model_validator(mode="after")
    def _consistent(self) -> "AdaptiveSpec":
        if self.select_seed not in self.seeds:
            raise ValueError(f"select_seed {self.select_seed} must be one of seeds {self.seeds}")
        labels = [m.label for m in [*self.temperature_methods, *self.teacher_methods]]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        return self


class AdaptiveConfig(RunConfig):
    """A run config plus the ``adaptive`` comparison (see the module docstring)."""

    adaptive: AdaptiveSpec

    @model_validator(mode="after")
    def _methods(self) -> "AdaptiveConfig":
        if self.student is None or not self.teachers:
            raise ValueError("an adaptive comparison needs a student and at least one teacher")
        if self.adaptive.teacher_methods and len(self.teachers) < 2:
            raise ValueError("adaptive.teacher_methods: comparing teacher weightings needs at least 2 teachers")
        if self.distill.teacher_weights is not None:
            raise ValueError("distill.teacher_weights: leave it null; the comparison sets the weights of each method")
        for i, m in enumerate(self.adaptive.temperature_methods):
            for j, c in enumerate(m.candidates):
                _distill(self.distill, c, f"adaptive.temperature_methods.{i}.candidates.{j}")
        for i, m in enumerate(self.adaptive.teacher_methods):
            _distill(self.distill, m.distill, f"adaptive.teacher_methods.{i}.distill")
        return self


def _distill(base: DistillConfig, overrides: dict[str, Any], where: str = "distill") -> DistillConfig:
    try:
        return parse(DistillConfig, {**base.model_dump(mode="json"), **overrides}, source=where)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def load_adaptive_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> AdaptiveConfig:
    return load_named(AdaptiveConfig, path, overrides, check_files)


def _describe(overrides: dict[str, Any]) -> str:
    """A short text of a method's distill overrides, for the table."""
    parts = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{a}={b}" for a, b in v.items() if a != "kind")
            parts.append(f"{v.get('kind', k)}({inner})" if inner else str(v.get("kind", k)))
        elif isinstance(v, list):
            parts.append(f"{k}=[{', '.join(f'{x:.2f}' for x in v)}]")
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _simplex_points(k: int, n: int, seed: int) -> list[list[float]]:
    """``n`` points uniform on the k-simplex (sorted uniform spacings), reproducible from ``seed``."""
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        cuts = sorted(rng.random() for _ in range(k - 1))
        edges = [0.0, *cuts, 1.0]
        points.append([round(b - a, 4) for a, b in zip(edges, edges[1:])])
    return points


class _Runner:
    """Trains (or reuses) one student per (distill settings, teachers, seed), as MLflow child runs."""

    def __init__(self, cfg: AdaptiveConfig, data, teachers, tracker: Tracker, parent_id: str, progress: bool) -> None:
        self.cfg, self.data, self.teachers, self.tracker, self.parent_id = cfg, data, teachers, tracker, parent_id
        self.cache = TeacherLogitCache()  # in memory: each teacher's logits computed once for the whole comparison
        self.memo: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, list[str]] = {}  # run id -> the table rows ("part:method") it counts in
        self.bar = tqdm(desc=f"adaptive {cfg.name}", unit="run", disable=not progress, dynamic_ncols=True)

    def __call__(self, part: str, method: str, overrides: dict[str, Any], teacher_idx: list[int], seed: int) -> dict[str, Any]:
        distill = _distill(self.cfg.distill, overrides)
        key = json.dumps([distill.model_dump(mode="json"), teacher_idx, seed], sort_keys=True)
        if key in self.memo:
            return self.memo[key]
        # A plain run config (no adaptive section in the run's logged parameters).
        run_cfg = RunConfig.model_validate({**self.cfg.model_dump(mode="json", exclude={"adaptive"}), "distill": distill.model_dump(mode="json")})
        self.bar.set_postfix(method=method, seed=seed)
        ctx = RunContext(self.tracker, role="adaptive", run_name=f"{method}-seed{seed}", parent_run_id=self.parent_id,
                         extra_tags={"method": method, "part": part, "comparison": self.cfg.name,
                                     "teachers_used": ",".join(map(str, teacher_idx))},
                         progress=False, cache=self.cache)
        r = train_student(run_cfg, self.data, ctx, seed=seed, teachers=[self.teachers[i] for i in teacher_idx], log_model=False)
        logged = dict(self.tracker.get_run(r.run_id).data.metrics) if r.run_id else {}
        out = {"run_id": r.run_id, "val_accuracy": r.metrics["val_accuracy"], "test_accuracy": r.metrics["test_accuracy"],
               "train_time_s": r.metrics.get("train_time_s"), **{k: v for k, v in logged.items() if k.startswith("objective_")}}
        self.memo[key] = out
        self.bar.update(1)
        return out


def run_adaptive(cfg: AdaptiveConfig, out_dir: str | Path, *, config_path: str | Path | None = None, progress: bool = True,
                 command: str | None = None) -> Path:
    """Run the comparison; returns the path of the markdown table (``out_dir/comparison.md``)."""
    start = time.perf_counter()
    spec = cfg.adaptive
    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=progress)
    teachers = obtain_teachers(cfg, data, tracker, config_path=config_path, progress=progress)
    # Tracker.run: the parent ends FINISHED, or KILLED / FAILED with the error as a tag.
    with tracker.run(cfg.tracking.experiment, f"adaptive-{cfg.name}",
                     tags={"role": "comparison", "method": "comparison", "dataset": cfg.data.dataset}) as parent:
        run = _Runner(cfg, data, teachers, tracker, parent.run_id, progress)
        parent.log_params({"seeds": spec.seeds, "select_seed": spec.select_seed, "fixed_temperatures": spec.fixed_temperatures,
                           "methods": [m.label for m in [*spec.temperature_methods, *spec.teacher_methods]]})
        if config_path is not None:
            parent.log_artifact(config_path, "config")
        rows, selection = _compare(cfg, run)
        run.bar.close()
        minutes = (time.perf_counter() - start) / 60
        figure = plot_adaptive(pd.DataFrame(rows).assign(is_baseline=lambda f: f["baseline"].isna()))
        files = figures_to_files({"adaptive_test_accuracy": figure}, out_dir)
        md = adaptive_markdown(cfg, rows, selection, teachers=[tracker.get_run(t.run_id).data.metrics if t.run_id else {} for t in teachers],
                               minutes=minutes, command=command, figure_files=files)
        table = Path(out_dir) / "comparison.md"
        table.write_text(md)
        parent.log_text(md, "report/comparison.md")
        for f in files:
            parent.log_artifact(f, "report")
        parent.log_params({"T_star": selection["T_star"], "best_single_teacher": selection["best_single_teacher"],
                           "searched_weights": selection["searched_weights"]})
        for r in rows:
            parent.log_metrics({f"test_accuracy_mean.{_metric_name(r['method'])}": r["test_mean"]})
        # Which runs make which row (a run can serve several: teacher 0 alone at T* is the fixed-T run),
        # and each part's baseline: report.adaptive_table rebuilds the table from the runs with these.
        for run_id, names in run.rows.items():
            tracker.handle(run_id).set_tags({"rows": "|".join(names)})
        parent.set_tags({"baselines": "|".join(f"{r['part']}:{r['method']}" for r in rows if r["baseline"] is None)})
        parent.log_metrics({"wall_minutes": minutes})
    return table


def _metric_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in label).replace(" ", "_")


def _compare(cfg: AdaptiveConfig, run: _Runner) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    spec = cfg.adaptive
    sel, seeds = spec.select_seed, spec.seeds
    rows: list[dict[str, Any]] = []
    selection: dict[str, Any] = {"grids": []}

    def choose(part: str, method: str, candidates: list[dict[str, Any]], teacher_idx: list[int]) -> tuple[dict[str, Any], list]:
        tried = [(c, run(part, method, c, teacher_idx, sel)) for c in candidates]
        best = max(tried, key=lambda cr: cr[1]["val_accuracy"])  # the first on a tie
        if len(tried) > 1:
            selection["grids"].append({"method": method, "tried": [(_describe(c), r["val_accuracy"]) for c, r in tried],
                                       "chosen": _describe(best[0])})
        return best[0], tried

    def row(part: str, method: str, overrides: dict[str, Any], teacher_idx: list[int], baseline: str | None, chosen: str | None = None):
        results = [run(part, method, overrides, teacher_idx, s) for s in seeds]
        for x in results:  # "index:part:method": the row's place in the table, for report.adaptive_table
            if x["run_id"]:
                run.rows.setdefault(x["run_id"], []).append(f"{len(rows)}:{part}:{method}")
        test_mean, test_sd = mean_std(r["test_accuracy"] for r in results)
        val_mean, val_sd = mean_std(r["val_accuracy"] for r in results)
        first = results[seeds.index(sel)]
        r = {"part": part, "method": method, "chosen": chosen if chosen is not None else _describe(overrides),
             "test_mean": test_mean, "test_sd": test_sd, "val_mean": val_mean, "val_sd": val_sd,
             "seeds": len(seeds), "baseline": baseline, "rule": _what_it_did(first), "train_s": mean_std(
                 [x["train_time_s"] for x in results if x.get("train_time_s") is not None] or [0.0])[0]}
        rows.append(r)
        return r

    # ---- part 1: temperature, one teacher
    fixed = [{"temperature": float(t)} for t in spec.fixed_temperatures]
    best_fixed, _ = choose("temperature", "fixed T (searched)", fixed, [0])
    t_star = best_fixed["temperature"]
    selection["T_star"] = t_star
    row("temperature", "fixed T (searched)", best_fixed, [0], None, f"T*={t_star:g}")
    for m in spec.temperature_methods:
        best, _ = choose("temperature", m.label, m.candidates, [0])
        row("temperature", m.label, best, [0], "fixed T (searched)")

    # ---- part 2: teachers, at T*
    selection["best_single_teacher"] = None
    selection["searched_weights"] = None
    k = len(cfg.teachers)
    if k > 1 and (spec.teacher_methods or spec.weight_points):
        base = {"temperature": t_star}
        singles = [(i, run("teachers", f"teacher {i} alone", base, [i], sel)) for i in range(k)]
        best_i = max(singles, key=lambda ir: ir[1]["val_accuracy"])[0]
        selection["best_single_teacher"] = best_i
        selection["grids"].append({"method": "best single teacher", "tried": [(f"teacher {i} ({_teacher_name(cfg, i)})", r["val_accuracy"])
                                                                              for i, r in singles], "chosen": f"teacher {best_i}"})
        row("teachers", "best single teacher", base, [best_i], "uniform ensemble", f"teacher {best_i} ({_teacher_name(cfg, best_i)}), T*={t_star:g}")
        uniform = {**base, "combine": "probs"}
        row("teachers", "uniform ensemble", uniform, list(range(k)), None, f"w uniform, probs, T*={t_star:g}")
        # the uniform point is the uniform ensemble's run (reused), then random points on the simplex
        cands = [uniform, *({**base, "teacher_weights": p, "combine": "probs"} for p in _simplex_points(k, spec.weight_points, cfg.seed))]
        best_w, _ = choose("teachers", "searched fixed weights", cands, list(range(k)))
        weights = best_w.get("teacher_weights", [1 / k] * k)
        selection["searched_weights"] = weights
        row("teachers", "searched fixed weights", best_w, list(range(k)), "uniform ensemble",
            "w=[" + ", ".join(f"{w:.2f}" for w in weights) + "], probs")
        for m in spec.teacher_methods:
            row("teachers", m.label, {**base, **m.distill}, list(range(k)), "uniform ensemble")
    baselines = {r["method"]: r for r in rows}
    for r in rows:
        b = baselines.get(r["baseline"]) if r["baseline"] else None
        r["delta"] = None if b is None else r["test_mean"] - b["test_mean"]
    return rows, selection


def _teacher_name(cfg: AdaptiveConfig, i: int) -> str:
    t = cfg.teachers[i]
    args = ",".join(f"{k}={v}" for k, v in (t.model.args if t.model else {}).items())
    return f"{t.model.name if t.model else t.model_uri}{'(' + args + ')' if args else ''}, seed {t.seed}"


def _what_it_did(result: dict[str, Any]) -> str:
    """The last epoch's logged temperature / weights of the selection seed's run, in a few characters."""
    parts = []
    if "objective_temperature" in result:
        parts.append(f"T={result['objective_temperature']:.2f}")
    elif "objective_temperature_mean" in result:
        parts.append(f"T {result['objective_temperature_min']:.1f}-{result['objective_temperature_max']:.1f} (mean {result['objective_temperature_mean']:.2f})")
    ws = sorted(k for k in result if k.startswith("objective_weight_") and (k.endswith("_mean") or k.count("_") == 2))
    if ws:
        parts.append("w=[" + ", ".join(f"{result[k]:.2f}" for k in ws) + "]")
    return "; ".join(parts)


def adaptive_markdown(cfg: AdaptiveConfig, rows: list[dict[str, Any]], selection: dict[str, Any], *, teachers: list[dict[str, float]],
                      minutes: float, command: str | None, figure_files=()) -> str:
    spec = cfg.adaptive
    shown = [{**r, "test": format_mean_std(r["test_mean"], r["test_sd"], scale=100), "val": format_mean_std(r["val_mean"], r["val_sd"], scale=100),
              "delta_pp": "" if r["delta"] is None else f"{100 * r['delta']:+.2f}", "train": f"{r['train_s']:.1f}"} for r in rows]
    cols = [("part", "part"), ("method", "method"), ("chosen", "chosen on validation"), ("test", "test acc % (mean ± sd)"),
            ("delta_pp", "Δ vs baseline (pp)"), ("val", "val acc %"), ("rule", "what the rule did (last epoch of the seed-%d run: T, or T range and mean; mean weight per teacher)" % spec.select_seed),
            ("train", "train s/run")]
    t_lines = [f"| {i} | {_teacher_name(cfg, i)} | {100 * m.get('test_accuracy', float('nan')):.2f} | {100 * m.get('val_accuracy', float('nan')):.2f} |"
               for i, m in enumerate(teachers)]
    lines = [
        f"# Adaptive temperature and teacher weighting: `{cfg.name}`", "",
        f"- command: `{command}`" if command else "",
        f"- wall time {minutes:.1f} min; seeds {', '.join(map(str, spec.seeds))} (test: mean ± sample sd); "
        f"choices on the validation split by the seed-{spec.select_seed} runs" + (f"; budget stated in the file: {spec.budget_minutes:g} min" if spec.budget_minutes else ""),
        f"- student {cfg.student.name}, {cfg.train.epochs} epochs, {cfg.data.transfer_size:,} transfer samples, "
        f"alpha {cfg.distill.alpha:g}; temperature part: teacher 0 alone; weighting part: all {len(cfg.teachers)} teachers at T* = {selection['T_star']:g}",
        "- Δ: test accuracy minus the baseline's (temperature kinds: fixed T at T*; weightings: the uniform ensemble)", "",
        markdown_table(shown, cols), "",
        "Teachers (test / val accuracy %, trained once on the labelled split):", "",
        "| # | teacher | test | val |", "|---|---|---|---|", *t_lines, "",
        "Choices on validation (seed %d):" % spec.select_seed, "",
    ]
    for g in selection["grids"]:
        tried = "; ".join(f"{d}: {100 * v:.2f}" for d, v in g["tried"])
        lines.append(f"- {g['method']}: {tried} -> **{g['chosen']}**")
    lines.append("")
    if figure_files:
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in figure_files] + [""]
    return "\n".join(line for line in lines if line is not None)
