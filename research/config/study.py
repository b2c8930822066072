"""A study config (:class:`StudyConfig`): a run config plus what to search (the search space),
how (sampler, pruner), what to optimise (objectives) and for how long."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..models import validate_model_args
from .base import Strict, flatten
from .run import RunConfig, load_named

SEARCHABLE = ("temperature", "alpha")


class FloatRange(Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class IntRange(Strict):
    int_low: int
    int_high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.int_low < self.int_high:
            raise ValueError(f"int_low ({self.int_low}) must be below int_high ({self.int_high})")
        return self


class Choice(Strict):
    choices: list[Any] = Field(min_length=1)


class SearchSpace(Strict):
    """What the study searches; anything not searched keeps the run config's value."""

    temperature: FloatRange | None = Field(default_factory=lambda: FloatRange(low=1.0, high=20.0, log=True))
    alpha: FloatRange | None = Field(default_factory=lambda: FloatRange(low=0.0, high=1.0))
    teacher_weights: bool = False  # draw K positive values, normalise onto the simplex
    params: dict[str, FloatRange | IntRange | Choice] = Field(default_factory=dict)  # other dotted keys, e.g. train.lr


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


class Objective(Strict):
    metric: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"

    @field_validator("metric")
    @classmethod
    def _not_test(cls, v: str) -> str:
        if v.startswith("test_"):
            raise ValueError(f"{v!r}: the test set never steers the search; use a val_ metric")
        allowed = ("val_accuracy", "val_nll", "val_ece", "val_agreement", "val_kl_to_teacher", "params", "size_bytes",
                   "latency_b1_ms", "latency_b256_ms", "flops")
        if v not in allowed:
            raise ValueError(f"unknown objective metric {v!r}; choose from {', '.join(allowed)}")
        return v


class StudyConfig(RunConfig):
    """A run config plus what to search, how, and for how long."""

    search: SearchSpace = Field(default_factory=SearchSpace)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    n_trials: int = Field(20, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    storage: str | None = None  # None: the journal file mlruns/optuna/journal.log
    enqueue: list[dict[str, float]] = Field(default_factory=lambda: [{"temperature": 4.0, "alpha": 0.1}])
    keep_models: int = Field(3, ge=0)  # best trials whose student is logged as an MLflow model
    baseline: bool = False  # studies compare trials, not the student alone

    @model_validator(mode="after")
    def _study(self) -> "StudyConfig":
        if self.compress is None and self.student is None:
            raise ValueError("student: a distillation study needs a student model")
        if self.compress is None and not self.teachers:
            raise ValueError("teachers: a distillation study needs at least one teacher")
        if self.search.teacher_weights and len(self.teachers) < 2:
            raise ValueError("search.teacher_weights: searching teacher weights needs at least 2 teachers")
        base = flatten(self.model_dump(mode="json"))
        for key in self.search.params:
            if not self._searchable(key, base):
                raise ValueError(f"search.params.{key}: not a searchable config key (e.g. train.lr, train.weight_decay, student.args.widths)")
        names = set(self.searched_names())
        if not names:
            raise ValueError("search: nothing to search; give temperature, alpha, teacher_weights or params")
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise ValueError("pruner: pruning needs a single objective; set pruner.name: none for multi-objective studies")
        if self.sampler.grid:
            unknown = set(self.sampler.grid) - names
            if unknown:
                raise ValueError(f"sampler.grid: {', '.join(sorted(unknown))} not searched; searched: {', '.join(sorted(names))}")
        if "enqueue" not in self.model_fields_set:  # the published defaults, where they were searched
            self.__dict__["enqueue"] = [p for p in self.enqueue if set(p) <= names]
        for i, point in enumerate(self.enqueue):
            unknown = set(point) - names
            if unknown:
                raise ValueError(f"enqueue.{i}: {', '.join(sorted(unknown))} not searched; searched: {', '.join(sorted(names))}")
            for k, v in point.items():
                space = self._space(k)
                if isinstance(space, FloatRange) and not space.low <= v <= space.high:
                    raise ValueError(f"enqueue.{i}.{k}: {v} is outside [{space.low}, {space.high}]")
        return self

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

    def searched_names(self) -> list[str]:
        s = self.search
        names = [n for n in SEARCHABLE if getattr(s, n) is not None]
        if s.teacher_weights:
            names += [f"w_{k}" for k in range(len(self.teachers))]
        return names + list(s.params)

    def _space(self, name: str):
        if name in SEARCHABLE:
            return getattr(self.search, name)
        return self.search.params.get(name)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def load_study_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> StudyConfig:
    return load_named(StudyConfig, path, overrides, check_files)
