"""Typed, validated run configuration: YAML in, one clear error out, early.

Everything is checked before anything runs or is written: unknown keys, value
ranges, model and dataset names, the files a dataset needs. A problem raises
:class:`ConfigError` whose message is one line naming the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DATASETS, check_data_available
from .distill.objectives import available_objectives, objective_knob_names, validate_objective_args
from .distill.objectives.temperature import TEMPERATURES, TemperatureValue
from .distill.objectives.weighting import WEIGHTINGS, WeightingValue
from .models import validate_model_args
from .tasks import available_tasks


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
    schedule: Literal["none", "cosine", "step", "multistep"] = "cosine"
    step_size: int = Field(10, ge=1)  # step schedule: epochs between decays
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])  # multistep: decay after these epochs (CRD's CIFAR recipe)
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

Method = Literal["none", "prune", "quantize", "lowrank", "onnx", "transfer"]
METHODS: tuple[str, ...] = Method.__args__


class CompressConfig(Strict):
    method: Method = "prune"

    # prune: unstructured = fraction of the Linear/Conv weights set to zero (global magnitude,
    # exact to the weight); structured = fraction of the model's parameters removed
    # (whole neurons/channels; met from below as closely as channel counts allow).
    sparsity: float = Field(0.5, ge=0, lt=1)
    structured: bool = False
    schedule: Literal["one_shot", "iterative"] = "one_shot"
    iterative_steps: int = Field(3, ge=1, le=100)  # iterative: prune/fine-tune rounds

    # lowrank: one global rank (capped per layer), or the fraction of the model's parameters
    # kept (ranks by one shared singular-value energy threshold); layers that would not shrink stay dense.
    rank: int | None = Field(None, ge=1)
    param_fraction: float | None = Field(None, gt=0, lt=1)

    # quantize
    bits: Literal[8] = 8
    backend: Literal["onnxruntime", "torch", "torchao"] = "onnxruntime"
    quant_mode: Literal["auto", "dynamic", "static"] = "auto"  # auto: static when the model has convs
    calibration_samples: int = Field(512, ge=1)

    # fine-tuning after prune / lowrank (0 = none), and the fine-tuning of `transfer`
    finetune_epochs: int = Field(0, ge=0)
    finetune_lr: float | None = Field(None, gt=0)  # None: the TrainConfig's lr

    # transfer: pretrain on a source task, then fine-tune on the real one
    source: Literal["mnist1d_seed", "label_subset"] = "mnist1d_seed"
    source_seed: int = 7  # mnist1d_seed: generation seed of the source task (42 is the target's)
    source_samples: int = Field(4000, ge=10)  # mnist1d_seed: labelled source samples generated
    source_classes: int = Field(5, ge=2)  # label_subset: pretrain on classes 0..source_classes-1
    pretrain_epochs: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "CompressConfig":
        if self.method == "lowrank" and (self.rank is None) == (self.param_fraction is None):
            raise ValueError("lowrank needs exactly one of rank or param_fraction")
        if self.method == "transfer" and self.finetune_epochs < 1:
            raise ValueError("transfer needs finetune_epochs >= 1 (the fine-tuning on the target task)")
        if self.method == "quantize" and self.backend == "torchao" and self.quant_mode == "static":
            # Refused here, before any run starts, rather than by quantize_int8 after the teacher has trained.
            raise ValueError("backend torchao has no static int8 path; use quant_mode dynamic or backend onnxruntime")
        if self.method == "transfer" and self.source == "mnist1d_seed" and self.source_seed == 42:
            raise ValueError("source_seed 42 is the seed of MNIST-1D's own samples; pick another")
        return self


class DistillConfig(Strict):
    """How the student learns from its teachers: a registered objective and its knobs.

    ``objective`` names one of ``research.distill.objectives`` (default ``kd``).
    The shared knobs ``temperature``, ``alpha``, ``teacher_weights``,
    ``combine`` and ``weighting`` stay top-level (study files, search keys such as
    ``distill.temperature`` and ``--set distill.alpha=...`` use them) and reach the
    objective when its signature has them; setting one the objective lacks is an
    error. The objective's other knobs go under ``args`` and are checked against
    its signature (see the objectives module docstring for why this shape).
    """

    SHARED_KNOBS: ClassVar[tuple[str, ...]] = ("temperature", "alpha", "teacher_weights", "combine", "weighting")

    objective: str = "kd"
    # A number (fixed T) or a temperature kind's spec, e.g. {kind: annealed, start: 8, end: 2}
    # (research/distill/objectives/temperature/: each kind's knobs next to its code).
    temperature: TemperatureValue = 4.0
    alpha: float = Field(0.1, ge=0, le=1)  # weight of the hard-label term
    teacher_weights: list[float] | None = None  # the fixed weighting's weights (uniform when null)
    combine: Literal["probs", "logits", "kl_sum"] = "probs"
    # None (fixed weights) or a weighting kind's spec, e.g. {kind: ca_mkd} (research/distill/objectives/weighting/).
    weighting: WeightingValue = None
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
            if self.compress.method == "transfer" and self.compress_source != "student":
                raise ValueError("compress.method: transfer trains a fresh student; set compress_source: student")
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
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{loc}: unknown key{hint}"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" [and {len(e.errors()) - 1} more problem(s)]" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"  # model-level checks name their field


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'unknown key' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
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

SEARCHABLE = ("temperature", "alpha")


# A search entry may be conditional (Optuna's define-by-run): `when: {key: value}` (or a list of
# values) draws it only when an EARLIER entry of search.params, a choice, took that value, e.g.
#   distill.temperature.kind: {choices: [fixed, annealed]}
#   distill.temperature.start: {low: 4, high: 16, when: {distill.temperature.kind: annealed}}
Condition = dict[str, Any] | None


class FloatRange(Strict):
    low: float
    high: float
    log: bool = False
    when: Condition = None

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
    when: Condition = None

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.int_low < self.int_high:
            raise ValueError(f"int_low ({self.int_low}) must be below int_high ({self.int_high})")
        return self


class Choice(Strict):
    choices: list[Any] = Field(min_length=1)
    when: Condition = None


def condition_holds(when: Condition, values: dict[str, Any]) -> bool:
    """Whether a conditional search entry is drawn, given the values drawn before it."""
    for key, wanted in (when or {}).items():
        if key not in values or values[key] not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


# Config values that are a kind's spec ({kind: ..., knob: value}) and the registry of their kinds: a
# study may search `<prefix>.kind` and `<prefix>.<knob>` (conditioned on the kind).
SPEC_KEYS = {"distill.temperature": TEMPERATURES, "distill.weighting": WEIGHTINGS}


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
    enqueue: list[dict[str, float | str]] = Field(default_factory=lambda: [{"temperature": 4.0, "alpha": 0.1}])
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
        self._check_conditions()
        for key in self.search.params:
            if self._spec_key(key) is not None:
                self._check_spec_key(key)
            elif not self._searchable(key, base):
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
                if isinstance(space, Choice) and v not in space.choices:
                    raise ValueError(f"enqueue.{i}.{k}: {v!r} is not one of {space.choices}")
        return self

    def _check_conditions(self) -> None:
        params = self.search.params
        order = list(params)
        for i, (key, space) in enumerate(params.items()):
            for cond_key, wanted in (space.when or {}).items():
                if cond_key not in order[:i]:
                    raise ValueError(f"search.params.{key}.when: {cond_key} must be an earlier entry of search.params")
                cond = params[cond_key]
                if not isinstance(cond, Choice):
                    raise ValueError(f"search.params.{key}.when: {cond_key} must be searched as choices")
                bad = [v for v in (wanted if isinstance(wanted, list) else [wanted]) if v not in cond.choices]
                if bad:
                    raise ValueError(f"search.params.{key}.when: {bad} not among the choices of {cond_key} ({cond.choices})")
        if self.search.temperature is not None and any(self._spec_key(k) == "distill.temperature" for k in params):
            raise ValueError("search.temperature: set it to null when searching distill.temperature.* "
                             "(a fixed T is distill.temperature.value, with when: {distill.temperature.kind: fixed})")
        if self.search.teacher_weights and any(self._spec_key(k) == "distill.weighting" for k in params):
            raise ValueError("search.teacher_weights: searched fixed weights and a searched weighting kind exclude each other; "
                             "run them as two studies")

    @staticmethod
    def _spec_key(key: str) -> str | None:
        """The spec prefix (``distill.temperature``, ``distill.weighting``) that ``key`` lies under, or None."""
        return next((p for p in SPEC_KEYS if key.startswith(p + ".")), None)

    def _check_spec_key(self, key: str) -> None:
        """``<prefix>.kind`` searches registered kinds; ``<prefix>.<knob>`` must be a knob of every
        kind it can be drawn with (its ``when`` kinds, else the searched kinds, else the file's kind)."""
        prefix = self._spec_key(key)
        registry = SPEC_KEYS[prefix]
        knob, kind_key, space = key[len(prefix) + 1:], f"{prefix}.kind", self.search.params[key]
        if knob == "kind":
            bad = [c for c in getattr(space, "choices", [None]) if c not in registry.available()]
            if bad:
                raise ValueError(f"search.params.{key}: {bad} not {registry.what} kinds; available: {', '.join(registry.available())}")
            return
        if space.when and kind_key in space.when:
            kinds = space.when[kind_key] if isinstance(space.when[kind_key], list) else [space.when[kind_key]]
        elif kind_key in self.search.params:
            kinds = list(self.search.params[kind_key].choices)
        else:
            current = self.distill.temperature if prefix == "distill.temperature" else self.distill.weighting
            kinds = [current["kind"] if isinstance(current, dict) else "fixed"]
        missing = [k for k in kinds if knob not in registry.knob_names(k)]
        if missing:
            raise ValueError(f"search.params.{key}: {registry.what} kind(s) {', '.join(missing)} have no knob {knob!r}; "
                             f"condition it with when: {{{kind_key}: ...}}")

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
    # compress: the knobs; sparsity (prune) or param_fraction (lowrank) follow each budget.
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
