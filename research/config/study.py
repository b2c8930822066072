"""A study config (:class:`StudyConfig`): a run config plus what to search (the search space,
read by :mod:`research.sweep.space`), how (sampler, pruner), what to optimise (objectives)
and for how long."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..distill.objectives.temperature import TEMPERATURES
from ..distill.objectives.weighting import WEIGHTINGS
from ..models import validate_model_args
from ..sweep.space import Choice, FloatRange, IntRange, SearchEncoder, SearchSpace, SpaceError  # noqa: F401  (re-exported)
from ..tasks import build_task
from .base import Strict, flatten
from .run import RunConfig, load_named

# Config values that are a kind's spec ({kind: ..., knob: value}) and the registry of their kinds: a
# study may search `<prefix>.kind` and `<prefix>.<knob>` (a knob conditioned on its kinds with main's
# `when:`, research.sweep.space), e.g.
#   distill.temperature.kind: {choices: [fixed, annealed]}
#   distill.temperature.start: {low: 4, high: 16, when: {distill.temperature.kind: annealed}}
# research.sweep.objective.trial_config builds the drawn spec.
SPEC_KEYS = {"distill.temperature": TEMPERATURES, "distill.weighting": WEIGHTINGS}


def spec_prefix(key: str) -> str | None:
    """The spec prefix (``distill.temperature``, ``distill.weighting``) that ``key`` lies under, or None."""
    return next((p for p in SPEC_KEYS if key.startswith(p + ".")), None)


class SamplerConfig(Strict):
    name: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int | None = 0
    grid: dict[str, list[float | int | str]] | None = None  # for name: grid, e.g. {temperature: [1, 4, 20]}

    @model_validator(mode="after")
    def _grid(self) -> "SamplerConfig":
        if self.name == "grid" and not self.grid:
            raise ValueError("the grid sampler needs grid: {param: [values, ...]}")
        if self.name != "grid" and self.grid:
            raise ValueError(f"grid values are only used by the grid sampler, not {self.name!r}")
        return self


class PrunerConfig(Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(3, ge=0)  # epochs before a trial may be pruned


# Run metrics that measure the model's cost (research.evaluate.deployment_metrics): lower is better.
COST_METRICS = ("params", "params_nonzero", "size_bytes", "payload_bytes", "latency_b1_ms", "latency_b256_ms", "flops")


class Objective(Strict):
    """One metric a study optimises: a validation metric of the run's task (``val_<name>``,
    e.g. ``val_accuracy``) or a cost (COST_METRICS). ``direction`` may be left out for the
    task's validation metric (the task's direction) and for costs (minimize); the study
    config fills it in and checks the metric against its task."""

    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("metric")
    @classmethod
    def _not_test(cls, v: str) -> str:
        if v.startswith("test_"):
            raise ValueError(f"{v!r}: the test set never steers the search; use a val_ metric")
        return v


class StudyConfig(RunConfig):
    """A run config plus what to search, how, and for how long.

    ``search`` is read by ``research.sweep.space`` (:meth:`search_encoder`): the one
    place that maps Optuna parameters to config keys. ``objectives`` defaults to the
    task's validation metric and direction."""

    search: SearchSpace = Field(default_factory=SearchSpace)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    objectives: list[Objective] = Field(default_factory=list, min_length=1)  # default (empty): the task's validation metric
    n_trials: int = Field(20, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    storage: str | None = None  # None: the journal file mlruns/optuna/journal.log
    # Points run first (published defaults), by parameter name or config key, e.g. {temperature: 4.0, alpha: 0.1}.
    enqueue: list[dict[str, Any]] = Field(default_factory=lambda: [{"temperature": 4.0, "alpha": 0.1}])
    keep_models: int = Field(3, ge=0)  # best trials whose student is logged as an MLflow model
    baseline: bool = False  # studies compare trials, not the student alone
    # Trials trained together in one stacked pass (research.sweep.population); 1: one at a time.
    # How the study is run, not what it is (like --workers): left out of the stored config and its
    # hash, so a study runs and joins alike with any population (--population K overrides it).
    population: int = Field(1, ge=1, exclude=True)

    @model_validator(mode="after")
    def _study(self) -> "StudyConfig":
        if self.compress is None and self.student is None:
            raise ValueError("student: a distillation study needs a student model")
        if self.compress is None and not self.teachers:
            raise ValueError("teachers: a distillation study needs at least one teacher")
        self.__dict__["objectives"] = self._checked_objectives()
        if self.compress is not None and self.search.measurements > 1:
            raise ValueError("search.repeats/search.folds: only a distillation study repeats or cross-validates its trials, "
                             "not a compression study")
        if self.search.teacher_weights and len(self.teachers) < 2:
            raise ValueError("search.teacher_weights: searching teacher weights needs at least 2 teachers")
        base = flatten(self.model_dump(mode="json"))
        self._check_spec_exclusions()
        for key in self.search.params:
            if spec_prefix(key) is None and not self._searchable(key, base):
                raise ValueError(f"search.params.{key}: not a searchable config key (e.g. train.lr, train.weight_decay, student.args.widths)")
        encoder = self.search_encoder()  # SpaceError (a ValueError naming the field) on a bad condition
        for key in self.search.params:  # after the encoder: a knob's `when` kinds are valid choices by now
            if spec_prefix(key) is not None:
                self._check_spec_key(key)
        names = encoder.names
        if not names:
            raise ValueError("search: nothing to search; give temperature, alpha, teacher_weights or params")
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise ValueError("pruner: pruning needs a single objective; set pruner.name: none for multi-objective studies")
        if self.sampler.grid:
            unknown = set(self.sampler.grid) - set(names)
            if unknown:
                raise ValueError(f"sampler.grid: {', '.join(sorted(unknown))} not searched; searched: {', '.join(names)}")
            missing = [n for n in names if n not in self.sampler.grid]
            if missing:  # Optuna's GridSampler fails the first trial that draws one
                raise ValueError(f"sampler.grid: no values for {', '.join(missing)} (the grid sampler needs every searched parameter)")
        if "enqueue" not in self.model_fields_set:  # the published defaults, where they were searched
            self.__dict__["enqueue"] = [p for p in self.enqueue if all(encoder.dimension(k) is not None for k in p)]
        points = []
        for i, point in enumerate(self.enqueue):
            try:
                points.append(encoder.check_point(point))
            except SpaceError as e:
                raise ValueError(f"enqueue.{i}.{e.name}: {e.reason}" if e.name else f"enqueue.{i}: {e.reason}") from None
        self.__dict__["enqueue"] = points  # numbers as their range's type: 4 and 4.0 are one study
        return self

    def _check_spec_exclusions(self) -> None:
        params = self.search.params
        if self.search.temperature is not None and any(spec_prefix(k) == "distill.temperature" for k in params):
            raise ValueError("search.temperature: set it to null when searching distill.temperature.* "
                             "(a fixed T is distill.temperature.value, with when: {distill.temperature.kind: fixed})")
        if self.search.teacher_weights and any(spec_prefix(k) == "distill.weighting" for k in params):
            raise ValueError("search.teacher_weights: searched fixed weights and a searched weighting kind exclude each other; "
                             "run them as two studies")

    def _check_spec_key(self, key: str) -> None:
        """``<prefix>.kind`` searches registered kinds; ``<prefix>.<knob>`` must be a knob of every
        kind it can be drawn with (its ``when`` kinds, else the searched kinds, else the file's kind)."""
        prefix = spec_prefix(key)
        registry = SPEC_KEYS[prefix]
        knob, kind_key, space = key[len(prefix) + 1:], f"{prefix}.kind", self.search.params[key]
        if knob == "kind":
            bad = [c for c in getattr(space, "choices", [None]) if c not in registry.available()]
            if bad:
                raise ValueError(f"search.params.{key}: {bad} not {registry.what} kinds; available: {', '.join(registry.available())}")
            return
        if kind_key in space.when:
            kinds = space.when[kind_key] if isinstance(space.when[kind_key], list) else [space.when[kind_key]]
        elif kind_key in self.search.params:
            kinds = list(getattr(self.search.params[kind_key], "choices", []))
        else:
            current = self.distill.temperature if prefix == "distill.temperature" else self.distill.weighting
            kinds = [current["kind"] if isinstance(current, dict) else "fixed"]
        missing = [k for k in kinds if knob not in registry.knob_names(k)]
        if missing:
            raise ValueError(f"search.params.{key}: {registry.what} kind(s) {', '.join(map(str, missing))} have no knob {knob!r}; "
                             f"condition it with when: {{{kind_key}: ...}}")

    def _checked_objectives(self) -> list[Objective]:
        """The objectives with their directions filled in; the task says which validation
        metrics exist and the direction of its own."""
        task = build_task(self.task)
        own = f"val_{task.validation_metric}"
        if not self.objectives:
            return [Objective(metric=own, direction=task.direction)]
        allowed = [f"val_{m}" for m in (*task.metric_names, *task.teacher_metric_names)] + list(COST_METRICS)
        out = []
        for i, o in enumerate(self.objectives):
            if o.metric not in allowed:
                raise ValueError(f"objectives.{i}.metric: unknown objective metric {o.metric!r} for task {self.task!r}; "
                                 f"choose from {', '.join(allowed)}")
            direction = o.direction or (task.direction if o.metric == own else "minimize" if o.metric in COST_METRICS else None)
            if direction is None:
                raise ValueError(f"objectives.{i}.direction: give maximize or minimize for {o.metric}")
            out.append(Objective(metric=o.metric, direction=direction))
        return out

    def _searchable(self, key: str, base: dict[str, Any]) -> bool:
        if key.startswith(("search.", "sampler.", "pruner.", "objectives.", "tracking.", "data.", "enqueue.")):
            return False
        if key in base or any(k.startswith(key + ".") for k in base):
            return True
        if key.startswith("student.args.") and self.student is not None and key.count(".") == 2:
            try:  # a size argument the student's model accepts, left at its default in the file
                validate_model_args(self.student.name, {key.rsplit(".", 1)[1]: None})
            except ValueError:
                return False
            return True
        return False

    def search_encoder(self) -> SearchEncoder:
        """The encoder between this study's Optuna parameters and config overrides
        (research.sweep.space); SpaceError when a condition is invalid."""
        return SearchEncoder.of(self.search, len(self.teachers))

    def searched_names(self) -> list[str]:
        """The Optuna parameter names a trial may store, in drawing order."""
        return self.search_encoder().names

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]



def load_study_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> StudyConfig:
    return load_named(StudyConfig, path, overrides, check_files)
