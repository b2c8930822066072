"""A comparison config (:class:`CompareConfig`): a run config plus the budgets, a student per
budget and the methods compared (``research compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .base import ConfigError, Strict
from .run import CompressConfig, ModelSpec, RunConfig, check_run_files, compress_unsupported, load_named


class CompareMethod(Strict):
    """One series of a comparison: how a model of each budget is obtained."""

    label: str
    kind: Literal["distill", "student", "compress"]
    # compress: the knobs; the method's budget knob (sparsity for pruning, param_fraction for
    # low rank: CompressionMethod.at_budget) follows each budget.
    compress: CompressConfig | None = None
    compress_source: Literal["teacher", "distilled", "student"] = "teacher"
    per_budget: bool = True  # false: one row whatever the budget (e.g. int8 of the teacher)
    budget_knobs: bool = True  # false: keep the given sparsity / rank (e.g. pruning an already small student)

    @model_validator(mode="after")
    def _consistent(self) -> "CompareMethod":
        if self.kind == "compress" and self.compress is None:
            raise ValueError(f"{self.label}: kind compress needs a compress: section")
        if self.kind != "compress" and self.compress is not None:
            raise ValueError(f"{self.label}: compress: is only read for kind compress")
        if self.compress is not None and self.compress_source not in type(self.compress).sources:
            raise ValueError(f"{self.label}: compress_source {self.compress_source} cannot be used with method "
                             f"{self.compress.method}; use {' or '.join(type(self.compress).sources)}")
        return self


class CompareSpec(Strict):
    budgets: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0])  # x fewer parameters than the teacher
    students: dict[float, ModelSpec] = Field(default_factory=dict)  # a student architecture for each budget
    methods: list[CompareMethod] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _consistent(self) -> "CompareSpec":
        if any(b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be above 1 (x fewer parameters), got {self.budgets}")
        needs_students = any(m.kind in ("distill", "student") or m.compress_source != "teacher" for m in self.methods)
        missing = [b for b in self.budgets if b not in self.students]
        if needs_students and missing:
            raise ValueError(f"students: no student architecture for budget(s) {missing}")
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods: labels must be unique, got {labels}")
        return self


class CompareConfig(RunConfig):
    compare: CompareSpec
    baseline: bool = False

    @model_validator(mode="before")
    @classmethod
    def _classification_only(cls, data: object) -> object:
        # Before the fields: a sequence config is refused in one line whatever else it lacks
        # (a missing compare: section, compress methods it cannot run).
        if isinstance(data, dict) and (why := compress_unsupported(data.get("task", "classification"))) is not None:
            raise ValueError(why)
        return data


def load_compare_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> CompareConfig:
    cfg = load_named(CompareConfig, path, overrides, check_files=False)
    if not cfg.teachers:
        raise ConfigError(f"{path}: teachers: a comparison needs a teacher (the model every method shrinks)")
    if check_files:
        check_run_files(cfg)
    return cfg
