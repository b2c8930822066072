"""A run config (:class:`RunConfig`) and its sections: data, models, teachers, training,
distillation, evaluation, tracking, and the ``compress:`` section.

Each method's own knobs live next to the method, not here: a distillation objective's
knobs beyond the four shared ones (``distill.args``) are checked against its signature
(:mod:`research.distill.objectives`); a compression method's config is its subclass of
:class:`MethodConfig`, in its own module of :mod:`research.compress.methods`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

from pydantic import BaseModel, Field, GetCoreSchemaHandler, field_validator, model_serializer, model_validator
from pydantic_core import core_schema

from ..data import DATASETS, check_data_available
from ..data.g2p import split_sizes
from ..distill.objectives import available_objectives, objective_knob_names, validate_objective_args
from ..distill.objectives.temperature import TemperatureValue
from ..distill.objectives.weighting import WeightingValue
from ..models import validate_model_args
from ..tasks import available_tasks
from .base import ConfigError, Strict, TaggedUnion, apply_overrides, config_hash, parse, read_yaml


class ModelSpec(Strict):
    """An architecture by registry name, with its size arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "ModelSpec":
        validate_model_args(self.name, self.args)
        return self


class G2PDataConfig(Strict):
    """CMUdict's own knobs (``data.dataset: cmudict``; ``research.data.g2p.load_g2p``). The split
    uses ``data.val_fraction`` and ``data.split_seed`` like every dataset."""

    max_words: int | None = Field(None, ge=3)  # a seeded subsample of the ~126,000 words; null keeps all
    stress: bool = False  # keep the stress digits (AH0) or strip them (39 phonemes)
    test_fraction: float = Field(0.1, gt=0, lt=1)


def _drop_when_none(out: dict[str, Any], model: BaseModel, keys: tuple[str, ...]) -> dict[str, Any]:
    # An optional section added after configs were hashed: left out of the dump while unset, so
    # the config hashes, teacher keys and logged params of every existing config stay as they were.
    for k in keys:
        if getattr(model, k) is None:
            out.pop(k, None)
    return out


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
    g2p: G2PDataConfig | None = None  # cmudict only; null: its defaults

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        return _drop_when_none(handler(self), self, ("g2p",))

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
        if self.g2p is not None and self.dataset != "cmudict":
            raise ValueError(f"g2p: only the cmudict dataset reads it (dataset is {self.dataset})")
        if self.augment and self.dataset == "cmudict":
            raise ValueError("augment is not defined for cmudict")
        if self.dataset == "cmudict":
            # The split's shares, checked here rather than when CMUdict loads: by then the run's
            # MLflow store exists and the error would be a traceback. Without max_words the
            # ~126,000 words always leave training words once the shares sum below 1.
            g = self.g2p or G2PDataConfig()
            split_sizes(g.max_words or 126_000, self.val_fraction, g.test_fraction)  # its ValueError names both shares
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
    # Which part of the forward's result holds the logits, for a model that returns a tuple/list
    # (an index, ``output: 0``) or a dict (a key, ``output: logits``); None: the result itself.
    output: int | str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.model is None) == (self.model_uri is None):
            raise ValueError("give exactly one of model (train it here) or model_uri (an MLflow model)")
        return self


def teacher_augment_flag(teacher: TeacherConfig, data: DataConfig) -> bool:
    return data.augment if teacher.augment is None else teacher.augment


# ---------------------------------------------------------------- the compress: section


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


class _RegisteredMethods(TaggedUnion):
    """``Annotated`` marker: a ``compress:`` section is validated by the config class of the
    registered method that claims it (``research.compress.registry.validate_method_config``),
    looked up when validating, so a method registered at any time is known. An error's
    location carries the method's name after the field (``compress.prune.rank``)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(_validate_method_config)

    def member(self, tag: str) -> type[BaseModel] | None:
        """The config class of the method registered as ``tag`` (None if there is none)."""
        from ..compress.registry import METHODS

        cls = METHODS.get(tag)
        return cls.config if cls is not None else None


def _validate_method_config(value: Any) -> "MethodConfig":
    from ..compress.registry import validate_method_config  # imports the methods, which import this module

    return validate_method_config(value)


# A compress: section: one registered method's config, chosen by its ``method`` (a ``MethodConfig``).
CompressConfig = Annotated[MethodConfig, _RegisteredMethods()]


class SequenceKDConfig(Strict):
    """Sequence-level distillation (task ``g2p``, ``research.distill.seqkd``): the distilled
    student's targets. ``reference``: the dictionary's pairs (word-level KD alone);
    ``beam_top``: the first teacher's ``top_k`` best beam outputs for every training word
    (sequence-level KD; with ``alpha: 1`` the loss is CE on them alone, with ``alpha`` < 1
    word-level KD is added); ``beam_closest``: the beam hypothesis closest to a reference
    (seq-inter). The n-best lists are cached under ``data.cache_dir/teacher_beams``."""

    targets: Literal["reference", "beam_top", "beam_closest"] = "beam_top"
    beam: int = Field(5, ge=1)
    length_penalty: float = Field(1.0, ge=0)  # score / |Y|^length_penalty (research.decoding)
    top_k: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _k(self) -> "SequenceKDConfig":
        if self.top_k > self.beam:
            raise ValueError(f"top_k {self.top_k} exceeds beam {self.beam}")
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
    sequence: SequenceKDConfig | None = None  # task g2p: the teacher's beam outputs as targets

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        return _drop_when_none(handler(self), self, ("sequence",))

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


# The tasks `research compress` and `research compare` handle: every compression method,
# the budgets and the deployment measurements assume one input tensor and [B, C] logits.
COMPRESS_TASKS = ("classification",)


def compress_unsupported(task: object) -> str | None:
    """Why ``task`` cannot be compressed or compared (one line), or None when it can. An
    unregistered name gives None: the task field's own check reports it."""
    if task in COMPRESS_TASKS or task not in available_tasks():
        return None
    return (f"compress/compare support classification tasks only; task {task!r} is a sequence task "
            "(distil it with `research distill` or `research study run`)")


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
            if (why := compress_unsupported(self.task)) is not None:
                raise ValueError(f"compress: {why}")
            if self.compress_source in ("distilled", "student") and self.student is None:
                raise ValueError(f"compress_source: {self.compress_source} needs a student model")
            if self.compress_source in ("teacher", "distilled") and not self.teachers:
                raise ValueError(f"compress_source: {self.compress_source} needs a teacher")
            sources = type(self.compress).sources
            if self.compress_source not in sources:
                raise ValueError(f"compress_source: {self.compress_source} cannot be used with compress.method "
                                 f"{self.compress.method}; use {' or '.join(sources)}")
        if (self.task == "g2p") != (self.data.dataset == "cmudict"):
            raise ValueError(f"task: the g2p task goes with data.dataset cmudict (task {self.task}, dataset {self.data.dataset})")
        if self.distill.sequence is not None and self.task != "g2p":
            raise ValueError("distill.sequence: only the g2p task has sequence-level targets")
        w = self.distill.teacher_weights
        if w is not None and len(w) != len(self.teachers):
            raise ValueError(f"distill.teacher_weights has {len(w)} values for {len(self.teachers)} teachers")
        return self


def teacher_key(teacher: TeacherConfig, data: DataConfig) -> str:
    """What makes a trained teacher reusable: its model, training, seed and the data it saw."""
    data_part = data.model_dump(exclude={"cache_dir", "transfer_size", "transfer_seed", "download", "root", "augment"})
    # ``output`` only says how to read the forward's result: the same weights, the same key.
    teacher_part = {**teacher.model_dump(mode="json", exclude={"output"}), "augment": teacher_augment_flag(teacher, data)}
    return config_hash({"teacher": teacher_part, "data": data_part})


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


def load_named(model: type[RunConfig], path: str | Path, overrides: list[str] | None, check_files: bool):
    """A study or comparison file: its MLflow experiment is its name unless given."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.setdefault("tracking", {})
    if isinstance(raw["tracking"], dict) and "experiment" not in raw["tracking"] and "name" in raw:
        raw["tracking"]["experiment"] = raw["name"]
    cfg = parse(model, raw, source=str(path))
    if check_files:
        check_run_files(cfg)
    return cfg
