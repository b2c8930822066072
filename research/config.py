"""Typed, validated run configuration: YAML in, one clear error out, early.

Everything is checked before anything runs or is written: unknown keys, value
ranges, model and dataset names, the files a dataset needs. A problem raises
:class:`ConfigError` whose message is one line naming the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, field_validator, model_validator
from pydantic_core import core_schema

from .data import DATASETS, check_data_available
from .distill.objectives import available_objectives, objective_knob_names, validate_objective_args
from .models import validate_model_args
from .sweep.space import Choice, FloatRange, IntRange, SearchEncoder, SearchSpace, SpaceError  # noqa: F401  (re-exported)
from .tasks import available_tasks, build_task


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    """An architecture by registry name, with its size arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "ModelSpec":
        validate_model_args(self.name, self.args)
        return self


class DataConfig(Strict):
    dataset: str = "mnist1d"
    root: str = "data"  # torchvision datasets live under root (e.g. ../shared/data)
    cache_dir: str = ".cache"  # generated MNIST-1D and teacher logits
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    transfer_size: int = Field(0, ge=0)  # extra unlabeled samples (MNIST-1D only), soft-labelled by the teacher
    transfer_seed: int = 1
    augment: bool = False
    download: bool = False

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; available: {', '.join(DATASETS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        if self.transfer_size and self.dataset != "mnist1d":
            raise ValueError("transfer_size is only available for mnist1d (it generates fresh samples)")
        if self.augment and self.dataset == "mnist1d":
            raise ValueError("augment is not defined for mnist1d")
        if self.transfer_seed == 42 and self.transfer_size:
            raise ValueError("transfer_seed 42 is the seed of MNIST-1D's own samples; pick another")
        return self


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(100, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = Field(10, ge=1)  # step schedule: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None keeps torch's default


class TeacherConfig(Strict):
    """A teacher trained here from ``model`` + ``train``, or taken from MLflow (``model_uri``)."""

    model: ModelSpec | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0
    augment: bool | None = None  # None: as data.augment; true e.g. for Hinton's jittered teacher
    model_uri: str | None = None  # e.g. runs:/<run_id>/model or models:/name/1

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.model is None) == (self.model_uri is None):
            raise ValueError("give exactly one of model (train it here) or model_uri (an MLflow model)")
        return self


def teacher_augment_flag(teacher: TeacherConfig, data: DataConfig) -> bool:
    return data.augment if teacher.augment is None else teacher.augment


# ---------------------------------------------------------------- compression baselines


class MethodConfig(Strict):
    """The knobs of one compression method: the ``compress:`` section of a run config.

    Each method registered in :mod:`research.compress` (``@register_method``) has
    its own subclass, with ``method: Literal["<name>"]`` and only the knobs that
    method reads; a section is validated by the class its ``method`` picks (a
    union discriminated on ``method``, see :data:`CompressConfig`), so a knob of
    another method (``compress.rank`` for ``prune``) is an unknown key naming the field.
    """

    method: str
    # What a method can compress (``compress_source``): transfer trains a fresh student only.
    sources: ClassVar[tuple[str, ...]] = ("teacher", "distilled", "student")

    @classmethod
    def claims(cls, raw: Mapping[str, Any]) -> bool:
        """Whether the raw mapping ``raw`` is this method's config (default: its ``method`` is
        this class's ``method`` value; ``method`` defaults to ``prune``, as it always has)."""
        return raw.get("method", DEFAULT_METHOD) == cls.model_fields["method"].default


DEFAULT_METHOD = "prune"  # a compress: section without a method has meant pruning since the first release


class _RegisteredMethods:
    """``Annotated`` marker: a ``compress:`` section is validated by the config class of the
    registered method that claims it (``research.compress.registry.validate_method_config``),
    looked up when validating, so a method registered at any time is known. An error's
    location carries the method's name after the field (``compress.prune.rank``)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(_validate_method_config)

    @staticmethod
    def member(tag: str) -> type[BaseModel] | None:
        """The config class of the method registered as ``tag`` (None if there is none)."""
        from .compress.registry import METHODS

        cls = METHODS.get(tag)
        return cls.config if cls is not None else None


def _validate_method_config(value: Any) -> "MethodConfig":
    from .compress.registry import validate_method_config  # imports the methods, which import this module

    return validate_method_config(value)


# A compress: section: one registered method's config, chosen by its ``method`` (a ``MethodConfig``).
CompressConfig = Annotated[MethodConfig, _RegisteredMethods()]


class DistillConfig(Strict):
    """How the student learns from its teachers: a registered objective and its knobs.

    ``objective`` names one of ``research.distill.objectives`` (default ``kd``).
    The shared knobs ``temperature``, ``alpha``, ``teacher_weights`` and
    ``combine`` stay top-level (study files, search keys such as
    ``distill.temperature`` and ``--set distill.alpha=...`` use them) and reach the
    objective when its signature has them; setting one the objective lacks is an
    error. The objective's other knobs go under ``args`` and are checked against
    its signature (see the objectives module docstring for why this shape).
    """

    SHARED_KNOBS: ClassVar[tuple[str, ...]] = ("temperature", "alpha", "teacher_weights", "combine")

    objective: str = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.1, ge=0, le=1)  # weight of the hard-label term
    teacher_weights: list[float] | None = None
    combine: Literal["probs", "logits"] = "probs"
    cache_teacher_logits: bool = True
    args: dict[str, Any] = Field(default_factory=dict)  # the objective's own knobs beyond the shared ones

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        if v not in available_objectives():
            raise ValueError(f"unknown objective {v!r}; available: {', '.join(available_objectives())}")
        return v

    @field_validator("teacher_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if any(w < 0 for w in v):
            raise ValueError(f"teacher weights must be non-negative, got {v}")
        if sum(v) <= 0:
            raise ValueError(f"teacher weights must not all be zero, got {v}")
        return v

    @model_validator(mode="after")
    def _objective_knobs(self) -> "DistillConfig":
        accepted = objective_knob_names(self.objective)
        for k in self.args:
            if k in self.SHARED_KNOBS:
                raise ValueError(f"args.{k}: set it as distill.{k}, not under args")
            if k not in accepted:
                own = [a for a in accepted if a not in self.SHARED_KNOBS]
                raise ValueError(f"args.{k}: objective {self.objective!r} has no knob {k!r}; "
                                 f"its knobs under args: {', '.join(own) or '(none)'}")
        for k in self.SHARED_KNOBS:
            default = type(self).model_fields[k].default
            if k not in accepted and getattr(self, k) != default:
                raise ValueError(f"{k}: objective {self.objective!r} has no knob {k!r} (leave it at {default!r}); "
                                 f"its knobs: {', '.join(accepted) or '(none)'}")
        validate_objective_args(self.objective, self.objective_knobs())
        return self

    def objective_knobs(self) -> dict[str, Any]:
        """The keyword arguments of the objective: the shared knobs it accepts, then ``args``."""
        accepted = objective_knob_names(self.objective)
        return {**{k: getattr(self, k) for k in self.SHARED_KNOBS if k in accepted}, **self.args}


class EvalConfig(Strict):
    batch_size: int = Field(1024, ge=1)
    latency_repeats: int = Field(30, ge=1)
    latency_threads: int = Field(1, ge=1)  # fixed so latency figures compare across runs
    ece_bins: int = Field(15, ge=2)


class TrackingConfig(Strict):
    experiment: str = "default"
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    log_model: bool = True  # students' models; a teacher's model is always logged (it is reused from there)


class RunConfig(Strict):
    name: str = "run"
    seed: int = 0
    task: str = "classification"  # a registered research.tasks name: what a batch is and how a model is scored
    data: DataConfig = Field(default_factory=DataConfig)
    teachers: list[TeacherConfig] = Field(default_factory=list)
    student: ModelSpec | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)  # the student's training
    distill: DistillConfig = Field(default_factory=DistillConfig)
    baseline: bool = True  # also train the student alone on the labels, for comparison
    baseline_train: TrainConfig | None = None  # the student alone's training, when it differs from `train`
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # A compression baseline instead of distillation (`research compress`, or a study over its knobs).
    compress: CompressConfig | None = None
    # What is compressed: the (first) teacher, a student distilled first (distil then compress),
    # or a fresh student (for transfer: pretrained on a source task, fine-tuned here).
    compress_source: Literal["teacher", "distilled", "student"] = "teacher"

    @field_validator("name")
    @classmethod
    def _named(cls, v: str) -> str:
        # It names the runs, the study and its MLflow experiment; Optuna and MLflow fail late on "".
        if not v.strip():
            raise ValueError("must not be empty (it names the runs, or the study and its experiment)")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in available_tasks():
            raise ValueError(f"unknown task {v!r}; available: {', '.join(available_tasks())}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        for i, t in enumerate(self.teachers):
            if t.augment and self.data.dataset == "mnist1d":
                raise ValueError(f"teachers.{i}.augment: no augmentation is defined for mnist1d")
        if self.compress is not None:
            if self.compress_source in ("distilled", "student") and self.student is None:
                raise ValueError(f"compress_source: {self.compress_source} needs a student model")
            if self.compress_source in ("teacher", "distilled") and not self.teachers:
                raise ValueError(f"compress_source: {self.compress_source} needs a teacher")
            sources = type(self.compress).sources
            if self.compress_source not in sources:
                raise ValueError(f"compress_source: {self.compress_source} cannot be used with compress.method "
                                 f"{self.compress.method}; use {' or '.join(sources)}")
        w = self.distill.teacher_weights
        if w is not None and len(w) != len(self.teachers):
            raise ValueError(f"distill.teacher_weights has {len(w)} values for {len(self.teachers)} teachers")
        return self


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists to dotted keys, e.g. ``teachers.0.model.name``."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    if not d and prefix:
        return {prefix: d}
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key))
    return out


def config_hash(obj: BaseModel | dict) -> str:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def teacher_key(teacher: TeacherConfig, data: DataConfig) -> str:
    """What makes a trained teacher reusable: its model, training, seed and the data it saw."""
    data_part = data.model_dump(exclude={"cache_dir", "transfer_size", "transfer_seed", "download", "root", "augment"})
    teacher_part = {**teacher.model_dump(mode="json"), "augment": teacher_augment_flag(teacher, data)}
    return config_hash({"teacher": teacher_part, "data": data_part})


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. distill.temperature=8")
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text.strip() else None
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                idx = _index(part, node, key)
                node = node[idx]
                continue
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, key, allow_append=True)
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return raw


def _index(part: str, node: list, key: str, allow_append: bool = False) -> int:
    if not part.isdigit() or int(part) > len(node) - (0 if allow_append else 1):
        raise ConfigError(f"--set {key}: {part!r} is not a valid index into a list of {len(node)}")
    return int(part)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def parse(model: type[BaseModel], raw: dict[str, Any], source: str = "config"):
    """Validate ``raw`` into ``model``, turning pydantic's report into one line."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e, model)}") from None


def format_validation_error(e: ValidationError, model: type[BaseModel]) -> str:
    err = e.errors()[0]
    parts, _, tag = _walk(model, err["loc"])
    loc = ".".join(parts)
    if err["type"] == "unknown_compression_method":
        return f"{loc}.method: {err['msg']}"
    if err["type"] == "extra_forbidden":
        _, parent, _ = _walk(model, err["loc"][:-1])
        allowed = sorted(getattr(parent, "model_fields", {}))
        where = f" for method {tag}" if tag else ""
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{loc}: unknown key{where}{hint}"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" [and {len(e.errors()) - 1} more problem(s)]" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"  # model-level checks name their field


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any, str | None]:
    """Follow an error location through the config classes: the parts worth showing (the method
    name that a ``compress:`` error carries, ``compress.prune.rank``, is not a key of the file),
    the config class reached, and that method name."""
    parts: list[str] = []
    current: Any = model
    tag = None
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
            continue
        if isinstance(current, _RegisteredMethods):
            tag, current = part, current.member(part)
            continue
        field = getattr(current, "model_fields", {}).get(part)
        parts.append(str(part))
        current = _model_in(field.annotation, field.metadata) if field is not None else None
    return parts, current, tag


def _model_in(annotation: Any, metadata: list | tuple = ()) -> Any:
    """The config class (or union marker) inside ``annotation`` (``X | None``, ``list[X]``, ``Annotated``)."""
    for m in [*metadata, *getattr(annotation, "__metadata__", ())]:
        if isinstance(m, _RegisteredMethods):
            return m
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def load_run_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> RunConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    cfg = parse(RunConfig, raw, source=str(path))
    if check_files:
        check_run_files(cfg)
    return cfg


def check_run_files(cfg: RunConfig) -> None:
    """The data a run needs must be there (or downloadable) before anything starts."""
    try:
        check_data_available(cfg.data.dataset, root=cfg.data.root, download=cfg.data.download)
    except FileNotFoundError as e:
        raise ConfigError(f"data.root: {e}") from None


# ---------------------------------------------------------------- studies

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
COST_METRICS = ("params", "params_nonzero", "size_bytes", "latency_b1_ms", "latency_b256_ms", "flops")


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

    @model_validator(mode="after")
    def _study(self) -> "StudyConfig":
        if self.compress is None and self.student is None:
            raise ValueError("student: a distillation study needs a student model")
        if self.compress is None and not self.teachers:
            raise ValueError("teachers: a distillation study needs at least one teacher")
        self.__dict__["objectives"] = self._checked_objectives()
        if self.search.teacher_weights and len(self.teachers) < 2:
            raise ValueError("search.teacher_weights: searching teacher weights needs at least 2 teachers")
        base = flatten(self.model_dump(mode="json"))
        for key in self.search.params:
            if not self._searchable(key, base):
                raise ValueError(f"search.params.{key}: not a searchable config key (e.g. train.lr, train.weight_decay, student.args.widths)")
        encoder = self.search_encoder()  # SpaceError (a ValueError naming the field) on a bad condition
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


def _load_named(model: type[RunConfig], path: str | Path, overrides: list[str] | None, check_files: bool):
    """A study or comparison file: its MLflow experiment is its name unless given."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.setdefault("tracking", {})
    if isinstance(raw["tracking"], dict) and "experiment" not in raw["tracking"] and "name" in raw:
        raw["tracking"]["experiment"] = raw["name"]
    cfg = parse(model, raw, source=str(path))
    if check_files:
        check_run_files(cfg)
    return cfg


def load_study_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> StudyConfig:
    return _load_named(StudyConfig, path, overrides, check_files)


# ---------------------------------------------------------------- comparisons


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


def load_compare_config(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> CompareConfig:
    cfg = _load_named(CompareConfig, path, overrides, check_files=False)
    if not cfg.teachers:
        raise ConfigError(f"{path}: teachers: a comparison needs a teacher (the model every method shrinks)")
    if check_files:
        check_run_files(cfg)
    return cfg
