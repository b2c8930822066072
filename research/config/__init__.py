"""Typed, validated configuration: YAML in, one clear error out, early.

Everything is checked before anything runs or is written: unknown keys, value
ranges, model and dataset names, the files a dataset needs. A problem raises
:class:`ConfigError` whose message is one line naming the field.

* :mod:`.base`: the strict base model, ``ConfigError``, ``--set`` overrides, YAML,
  one-line validation errors, flattening and hashing;
* :mod:`.run`: :class:`RunConfig` and its sections (data, models, teachers, training,
  distillation, evaluation, tracking, the ``compress:`` section);
* :mod:`.study`: :class:`StudyConfig` (search space, sampler, pruner, objectives);
* :mod:`.compare`: :class:`CompareConfig`.

Each method's own knobs live next to the method: a distillation objective's in
:mod:`research.distill.objectives` (checked against its signature), a compression
method's config in its module of :mod:`research.compress.methods`. Every name is
importable from ``research.config`` as before the split.
"""

from .base import (
    ConfigError,
    Strict,
    TaggedUnion,
    apply_overrides,
    config_hash,
    flatten,
    format_validation_error,
    parse,
    read_yaml,
)
from .compare import CompareConfig, CompareMethod, CompareSpec, load_compare_config
from .run import (
    DEFAULT_METHOD,
    CompressConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    MethodConfig,
    ModelSpec,
    RunConfig,
    TeacherConfig,
    TrackingConfig,
    TrainConfig,
    check_run_files,
    load_named,
    load_run_config,
    teacher_augment_flag,
    teacher_key,
)
from .study import (
    COST_METRICS,
    Choice,
    FloatRange,
    IntRange,
    Objective,
    PrunerConfig,
    SamplerConfig,
    SearchEncoder,
    SearchSpace,
    SpaceError,
    StudyConfig,
    load_study_config,
)

__all__ = [
    "DEFAULT_METHOD",
    "COST_METRICS",
    "Choice",
    "CompareConfig",
    "CompareMethod",
    "CompareSpec",
    "CompressConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "FloatRange",
    "IntRange",
    "MethodConfig",
    "ModelSpec",
    "Objective",
    "PrunerConfig",
    "RunConfig",
    "SamplerConfig",
    "SearchEncoder",
    "SearchSpace",
    "SpaceError",
    "Strict",
    "StudyConfig",
    "TaggedUnion",
    "TeacherConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "check_run_files",
    "config_hash",
    "flatten",
    "format_validation_error",
    "load_compare_config",
    "load_named",
    "load_run_config",
    "load_study_config",
    "parse",
    "read_yaml",
    "teacher_augment_flag",
    "teacher_key",
]
