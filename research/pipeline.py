"""What one run does: data -> teachers -> student (alone and distilled) ->
evaluation -> tracking. The CLI and the study code both call these functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .config import RunConfig, TeacherConfig, flatten, teacher_augment_flag, teacher_key
from .data import DataBundle, Split, default_augment, load_data
from .distill import Distiller, Supervised, TeacherLogitCache, build_distiller, teacher_log_probs
from .evaluate import count_parameters, deployment_metrics
from .models import build_model
from .models.outputs import LogitsOf, ModelOutputError, check_classes, model_device_dtype
from .runs import RunContext, shared_tags, tracked_run
from .stats import mean_std
from .tasks import Task, build_task
from .tracking import RunHandle, Tracker
from .train import EpochCallback, History, fit, seed_everything


@dataclass
class Teacher:
    model: nn.Module
    run_id: str | None
    key: str | None = None
    reused: bool = False


@dataclass
class RunResult:
    role: str  # teacher | student | distill | compress | trial | final_*
    seed: int
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)


def load_run_data(cfg: RunConfig, *, progress: bool = True) -> DataBundle:
    d = cfg.data
    if d.dataset == "cmudict":  # a sequence dataset (task g2p): research.data.g2p
        from .config.run import G2PDataConfig
        from .data.g2p import load_g2p_bundle

        g = d.g2p or G2PDataConfig()
        return load_g2p_bundle(max_words=g.max_words, stress=g.stress, val_fraction=d.val_fraction,
                               test_fraction=g.test_fraction, seed=d.split_seed)
    return load_data(
        d.dataset,
        root=d.root,
        cache_dir=d.cache_dir,
        val_fraction=d.val_fraction,
        split_seed=d.split_seed,
        transfer_size=d.transfer_size,
        transfer_seed=d.transfer_seed,
        augment=d.augment,
        download=d.download,
        show_progress=progress,
    )


def concat_splits(*splits: Split | None) -> Split:
    parts = [s for s in splits if s is not None and len(s)]
    return Split(torch.cat([s.x for s in parts]), torch.cat([s.y for s in parts]))


def evaluate_run(
    model: nn.Module,
    data: DataBundle,
    cfg: RunConfig,
    *,
    teachers: Sequence[nn.Module] = (),
    teacher_weights: Sequence[float] | None = None,
    combine: str = "probs",
    with_deployment: bool = True,
    cache: TeacherLogitCache | None = None,
) -> dict[str, float]:
    """Validation and test metrics of ``cfg.task`` (with agreement to the teachers' combined
    prediction when there are teachers), then size, latency and FLOPs on the task's example input.
    With ``cache`` (a study's or a job's), each teacher's predictions on val and test are computed
    once per process and reused by every later evaluation (:meth:`TeacherLogitCache.predictions`)."""
    task = build_task(cfg.task)
    out: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        t_logits = None
        if teachers:
            t_each = _teacher_predictions(teachers, split, task, cfg, cache)
            t_logits = teacher_log_probs(t_each, 1.0, teacher_weights, combine)  # log-probs are valid logits
        m = task.evaluate(model, split.x, split.y, teacher_logits=t_logits, batch_size=cfg.eval.batch_size, ece_bins=cfg.eval.ece_bins)
        out.update({f"{name}_{k}": v for k, v in m.items()})
    if with_deployment:
        out.update(_deployment(model, data, cfg, task))
    return out


def evaluate_population(
    models: Sequence[nn.Module],
    data: DataBundle,
    cfg: RunConfig,
    *,
    teachers: Sequence[nn.Module] = (),
    teacher_weights: Sequence[Sequence[float] | None] | None = None,
    combine: str = "probs",
    cache: TeacherLogitCache | None = None,
) -> list[dict[str, float]]:
    """:func:`evaluate_run` of each of K stackable MLPs of one architecture (a population round's
    members, ``research.population``), with ``teacher_weights[k]`` for model k, in one stacked
    forward pass per split (``research.population.stacked_logits``) scored by the task's own
    metric code (:meth:`Task.evaluate_logits`): the same metrics as each model evaluated alone, up
    to the stacked matmul's reduction order.

    The deployment metrics (parameters, bytes, FLOPs, latency) are measured ONCE, on ``models[0]``,
    and given to every model: the members' graphs are identical (one architecture, weights of the
    same shapes and dtype), so counts and bytes are equal and latency differs only by measurement
    noise; ``params_nonzero``, which depends on the weights' values, is counted per model. Callers say so on the runs (the study tags ``latency_shared_by_population``).
    Raises ValueError when the models do not stack; NotImplementedError for a task without
    metrics from logits (only classification populations exist)."""
    from .population import stacked_logits

    if not models:
        return []
    task = build_task(cfg.task)
    weights = list(teacher_weights) if teacher_weights is not None else [None] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} teacher weightings for {len(models)} models")
    out: list[dict[str, float]] = [{} for _ in models]
    for name, split in (("val", data.val), ("test", data.test)):
        logits = stacked_logits(models, split.x, batch_size=cfg.eval.batch_size)  # [K, N, C]
        t_each = _teacher_predictions(teachers, split, task, cfg, cache) if teachers else None
        for k in range(len(models)):
            t_logits = teacher_log_probs(t_each, 1.0, weights[k], combine) if t_each is not None else None
            m = task.evaluate_logits(logits[k], split.y, teacher_logits=t_logits, ece_bins=cfg.eval.ece_bins)
            out[k].update({f"{name}_{key}": v for key, v in m.items()})
    shared = _deployment(models[0], data, cfg, task)  # one architecture: measured once for all (see above)
    for model, m in zip(models, out):
        # ... except the one count that depends on the weights' values: each member's own.
        m.update(shared, params_nonzero=float(count_parameters(model, nonzero=True)))
    return out


def _teacher_predictions(teachers: Sequence[nn.Module], split: Split, task: Task, cfg: RunConfig,
                         cache: TeacherLogitCache | None) -> list[torch.Tensor]:
    """Each teacher's raw predictions on ``split`` (the per-process memo of ``cache`` when given)."""
    if cache is None:
        return [task.predict(t, split.x, split.y, batch_size=cfg.eval.batch_size) for t in teachers]
    return [cache.predictions(t, split.x, split.y, task=task, batch_size=cfg.eval.batch_size) for t in teachers]


def _deployment(model: nn.Module, data: DataBundle, cfg: RunConfig, task: Task) -> dict[str, float]:
    return deployment_metrics(model, data.input_shape, repeats=cfg.eval.latency_repeats, threads=cfg.eval.latency_threads,
                              example=lambda b: task.example_input(data.input_shape, b))


def _epoch_logger(handle: RunHandle | None) -> list[EpochCallback]:
    if handle is None:
        return []
    return [lambda epoch, metrics: handle.log_metrics(metrics, step=epoch)]


def train_teacher(tc: TeacherConfig, data: DataBundle, cfg: RunConfig, ctx: RunContext, *, index: int = 0) -> tuple[Teacher, RunResult]:
    """Train one teacher on the labelled training split, logged as its own run (role ``teacher``
    unless ``ctx.role``; named ``teacher-<index>-<model>`` unless ``ctx.run_name``); its model is
    always logged, since reusing a teacher loads it from there."""
    assert tc.model is not None
    key = teacher_key(tc, cfg.data)
    seed_everything(tc.seed, tc.train.deterministic)  # the initial weights follow the seed too
    model = build_model(tc.model.name, input_shape=data.input_shape, num_classes=data.num_classes, **tc.model.args)
    role = ctx.role or "teacher"
    tags = {**shared_tags(cfg, method="teacher", role=role, seed=tc.seed, model=tc.model.name), "teacher_key": key}
    params = {"seed": tc.seed, **flatten(tc.model_dump(mode="json"), "teacher"), **flatten(cfg.data.model_dump(mode="json"), "data")}
    with tracked_run(ctx, cfg, name=ctx.run_name or f"teacher-{index}-{tc.model.name}", tags=tags, params=params) as run:
        augment = default_augment(cfg.data.dataset) if teacher_augment_flag(tc, cfg.data) else None
        history = fit(
            Supervised(model, task=build_task(cfg.task)), data.train, tc.train, seed=tc.seed, val=data.val, augment=augment,
            callbacks=_epoch_logger(run), progress=ctx.progress, desc=f"teacher {index} ({tc.model.name})",
        )
        metrics = {**evaluate_run(model, data, cfg), "train_time_s": history.wall_time_s}
        if run is not None:
            run.log_metrics(metrics, step=len(history.epochs))  # the final evaluation is of the last epoch
            run.log_model(model, input_example=data.test.x[:2])
    run_id = run.run_id if run is not None else None
    return Teacher(model, run_id, key), RunResult(role, tc.seed, run_id, metrics, model)


def obtain_teachers(
    cfg: RunConfig,
    data: DataBundle,
    tracker: Tracker,
    *,
    config_path: str | Path | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
    on_trained: Callable[[RunResult], None] | None = None,
) -> list[Teacher]:
    """Each teacher once: from its model_uri, reused from a finished run with the
    same teacher key in this experiment, or trained now (and logged).

    Before anything trains, the student (built once, aside) and every ``model_uri`` teacher
    are called on a batch of the task's example input: a teacher returning a tuple or dict is
    read through its ``output`` setting, a half-precision one gets its input cast and its
    logits upcast (``research.models.outputs.LogitsOf``), and outputs whose class dimension is
    not ``data.num_classes`` raise :class:`~research.models.outputs.ModelOutputError` (one line,
    the CLI's exit 2) while nothing is written yet. Teachers trained or reused here are checked too.
    """
    task = build_task(cfg.task)
    check_student(cfg, data, task)
    from_uri: dict[int, Teacher] = {}
    for i, tc in enumerate(cfg.teachers):  # first: a wrong model_uri teacher must not wait for other teachers' training
        if tc.model_uri is not None:
            model = adapt_teacher(_load_model_uri(tracker, tc, i), tc, i, data, task)
            run_id = tc.model_uri.split("/")[1] if tc.model_uri.startswith("runs:/") else None
            from_uri[i] = Teacher(model, run_id, reused=True)
    teachers: list[Teacher] = []
    for i, tc in enumerate(cfg.teachers):
        if i in from_uri:
            teachers.append(from_uri[i])
            continue
        key = teacher_key(tc, cfg.data)
        found = tracker.find_runs(cfg.tracking.experiment, tags={"teacher_key": key, "method": "teacher"})
        if found:
            run_id = found[0].info.run_id
            model = adapt_teacher(tracker.load_model(f"runs:/{run_id}/model"), tc, i, data, task)
            teachers.append(Teacher(model, run_id, key, reused=True))
            continue
        ctx = RunContext(tracker, parent_run_id=parent_run_id, config_path=config_path, progress=progress)
        teacher, result = train_teacher(tc, data, cfg, ctx, index=i)
        if on_trained is not None:
            on_trained(result)
        teacher.model = adapt_teacher(teacher.model, tc, i, data, task)
        teachers.append(teacher)
    for t in teachers:
        t.model.eval()
    return teachers


def check_models(cfg: RunConfig, data: DataBundle, tracker: Tracker) -> None:
    """What :func:`obtain_teachers` checks before anything trains (the student, and every
    ``model_uri`` teacher loaded and adapted), for callers that write before they obtain the
    teachers, such as a study, which creates its parent run first. Raises ModelOutputError."""
    task = build_task(cfg.task)
    check_student(cfg, data, task)
    for i, tc in enumerate(cfg.teachers):
        if tc.model_uri is not None:
            adapt_teacher(_load_model_uri(tracker, tc, i), tc, i, data, task)


def _load_model_uri(tracker: Tracker, tc: TeacherConfig, index: int) -> nn.Module:
    """The teacher at ``tc.model_uri``; a URI that does not load (no such run, no model there, not a
    PyTorch model) is bad input: ModelOutputError in one line naming ``teachers.<index>.model_uri``."""
    try:
        model = tracker.load_model(tc.model_uri)
    except Exception as e:  # MLflow's errors differ by store and cause; the first line says which
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelOutputError(f"teachers.{index}.model_uri: cannot load {tc.model_uri}: {first}") from e
    if not isinstance(model, nn.Module):
        raise ModelOutputError(f"teachers.{index}.model_uri: {tc.model_uri} is a {type(model).__name__}, not a PyTorch module")
    return model


def _example_batch(data: DataBundle, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    # Two rows: a batch dimension that is not 1, so a model squeezing it shows up. The targets'
    # rows cycle, so a training split of one row (a 3-word CMUdict subsample) still gives two.
    x = task.example_input(data.input_shape, 2)
    return x, data.train.y[torch.arange(2) % len(data.train.y)]


def _check_classes(model: nn.Module, data: DataBundle, task: Task, *, what: str) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the example's noise must not move the run's RNG
            x, y = _example_batch(data, task)
            rows, _ = task.loss_rows(task.forward(model, x, y), y)
    finally:
        model.train(was)
    check_classes(rows, data.num_classes, what=what)


def adapt_teacher(model: nn.Module, tc: TeacherConfig, index: int, data: DataBundle, task: Task) -> nn.Module:
    """``model`` as a float32-logits module (wrapped in ``LogitsOf`` when its output is a tuple/dict,
    ``tc.output`` is set or its weights are half precision), checked against the data's classes.
    Raises ModelOutputError naming ``teachers.<index>``."""
    source = tc.model_uri or (tc.model.name if tc.model else "?")
    what, how = f"teachers.{index} ({source})", f"teachers.{index}.output"
    wrapped = LogitsOf(model, tc.output, what=what, how=how)
    raw: list = []
    hook = model.register_forward_hook(lambda module, args, out: raw.append(out))
    try:  # one forward of the teacher: checks the output and shows whether the wrapper is needed
        _check_classes(wrapped, data, task, what=what)
    finally:
        hook.remove()
    plain = (tc.output is None and isinstance(raw[0], torch.Tensor) and raw[0].dtype == torch.float32
             and model_device_dtype(model)[1] in (None, torch.float32))
    return model if plain else wrapped


def check_student(cfg: RunConfig, data: DataBundle, task: Task) -> None:
    """The student of ``cfg`` (when there is one) built aside and called once: its output must
    have ``data.num_classes`` classes. Raises ModelOutputError (or the factory's ValueError)."""
    if cfg.student is None:
        return
    with torch.random.fork_rng(devices=[]):  # the run seeds and builds its own student later
        student = build_model(cfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **cfg.student.args)
    _check_classes(student, data, task, what=f"student ({cfg.student.name})")


def distillation_task(
    student: nn.Module,
    teachers: Sequence[Teacher],
    train_split: Split,
    data: DataBundle,
    cfg: RunConfig,
    *,
    cache: TeacherLogitCache | None = None,
    task: Task | None = None,
) -> Distiller:
    """``cfg.distill``'s Distiller for all ``teachers`` (via ``build_distiller``), with cached
    teacher logits when the inputs are not augmented."""
    task = task or build_task(cfg.task)
    cached = None
    if cfg.distill.cache_teacher_logits and data.augment is None:
        cache = cache or TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits")
        fp = train_split.fingerprint()
        cached = [cache.logits(t.model, train_split.x, fp, batch_size=cfg.eval.batch_size, task=task, y=train_split.y) for t in teachers]
    return build_distiller(student, [t.model for t in teachers], cfg.distill, cached_logits=cached, task=task)


def train_student(
    cfg: RunConfig,
    data: DataBundle,
    ctx: RunContext,
    *,
    seed: int,
    teachers: Sequence[Teacher] = (),
    full_train: bool = False,
    callbacks: Iterable[EpochCallback] = (),
    log_model: bool | None = None,
    log_weights: bool = False,
) -> RunResult:
    """Train the student alone (no teachers) or distilled from ``teachers``; one run opened by
    :func:`research.runs.tracked_run` from ``ctx`` (role ``student`` unless ``ctx.role``).

    ``full_train`` trains on train + val (a final run after the search) and
    reports the test split only for what the run was selected on. ``callbacks`` get each
    epoch's metrics (a study's pruning). The student is logged as an MLflow model when
    ``log_model`` (None: ``cfg.tracking.log_model``), else its weights when ``log_weights``.
    """
    assert cfg.student is not None
    base = data.full_train() if full_train else data.train
    distilled = bool(teachers)
    train_split = concat_splits(base, data.transfer) if distilled else base
    if distilled and cfg.distill.sequence is not None:  # sequence-level KD: the teacher's beam outputs as targets
        from .distill.seqkd import sequence_training_split

        train_split = sequence_training_split(data, teachers[0].model, cfg.distill.sequence, full_train=full_train,
                                              cache_dir=Path(cfg.data.cache_dir) / "teacher_beams")
    train_cfg = cfg.train if distilled or cfg.baseline_train is None else cfg.baseline_train
    seed_everything(seed, train_cfg.deterministic)  # the initial weights follow the seed too
    student = build_model(cfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **cfg.student.args)
    task = build_task(cfg.task)
    learner = distillation_task(student, teachers, train_split, data, cfg, cache=ctx.cache, task=task) if distilled else Supervised(student, task=task)
    role = ctx.role or "student"
    tags = shared_tags(cfg, method="distill" if distilled else "student", role=role, seed=seed, model=cfg.student.name,
                       teacher_run_ids=[t.run_id for t in teachers])
    params = {**flatten(cfg.model_dump(mode="json")), "seed": seed, "full_train": full_train}  # the run's seed, not the file's
    if not distilled:
        params = {k: v for k, v in params.items() if not k.startswith(("distill.", "teachers.", "train.", "baseline_train."))}
        params.update(flatten(train_cfg.model_dump(mode="json"), "train"))
    name = ctx.run_name or f"{role}-seed{seed}"
    with tracked_run(ctx, cfg, name=name, tags=tags, params=params) as run:
        history: History = fit(
            learner, train_split, train_cfg, seed=seed, val=None if full_train else data.val, augment=data.augment,
            callbacks=[*_epoch_logger(run), *callbacks], progress=ctx.progress, desc=name,
        )
        metrics = evaluate_run(
            student, data, cfg, teachers=[t.model for t in teachers],
            teacher_weights=cfg.distill.teacher_weights, combine=cfg.distill.combine, cache=ctx.cache,
        )
        metrics["train_time_s"] = history.wall_time_s
        metrics["train_samples"] = float(len(train_split))
        if run is not None:
            run.log_metrics(metrics, step=len(history.epochs))
            if cfg.tracking.log_model if log_model is None else log_model:
                run.log_model(student, input_example=data.test.x[:2])
            elif log_weights:
                run.log_state_dict(student)
            metrics["tracking_time_s"] = run.seconds
            run.log_metrics({"tracking_time_s": run.seconds}, step=len(history.epochs))
    return RunResult(role, seed, run.run_id if run is not None else None, metrics, student)


def method_label(cfg: RunConfig) -> str:
    """A readable name for what a run does, used as its ``method`` tag (one series per method in
    reports): ``distill``, or the compression method's own label (``prune_structured_iterative``,
    ``int8_onnxruntime``, ...), prefixed ``distill+`` when a distilled student is compressed."""
    if cfg.compress is None:
        return "distill"
    from .compress import compression_method

    name = compression_method(cfg.compress).label()
    return f"distill+{name}" if cfg.compress_source == "distilled" else name


def compress_run(cfg: RunConfig, data: DataBundle, ctx: RunContext, *, seed: int, teachers: Sequence[Teacher] = ()) -> RunResult:
    """One compression baseline as one run opened by :func:`research.runs.tracked_run` from ``ctx``
    (role ``compress`` unless ``ctx.role``), measured like a distillation run: the teacher (or a
    distilled or fresh student) compressed by ``cfg.compress``. With ``compress_source: distilled``
    the student is first distilled in a run of its own (role ``distill_base``, same parent and
    extra tags), whose id the compression run carries as ``base_run_id``."""
    from .compress import compress, compressed_deployment_metrics

    assert cfg.compress is not None
    label = method_label(cfg)
    base_run_id = None
    if cfg.compress_source == "teacher":
        base, base_run_id = teachers[0].model, teachers[0].run_id
    elif cfg.compress_source == "distilled":
        # The trial's params and run-start hook belong to the compression run, not to its base.
        base_ctx = ctx.replace(role="distill_base", run_name=f"{ctx.run_name or label}-base", extra_params={}, on_run_start=None)
        distilled = train_student(cfg, data, base_ctx, seed=seed, teachers=teachers, log_model=False, log_weights=True)
        base, base_run_id = distilled.model, distilled.run_id
    else:
        assert cfg.student is not None
        seed_everything(seed, cfg.train.deterministic)
        base = build_model(cfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **cfg.student.args)
    spec = cfg.teachers[0].model if cfg.compress_source == "teacher" else cfg.student  # None: a teacher from model_uri
    role = ctx.role or "compress"
    tags = shared_tags(cfg, method=label, role=role, seed=seed, model=spec.name if spec else None, teacher_run_ids=[t.run_id for t in teachers])
    tags |= {"compress_source": cfg.compress_source, "base_run_id": base_run_id}
    params = {**flatten(cfg.model_dump(mode="json")), "seed": seed}
    with tracked_run(ctx, cfg, name=ctx.run_name or f"{label}-seed{seed}", tags=tags, params=params) as run:
        t0 = time.perf_counter()
        # Fine-tuning distils from ALL the teachers, as the distillation did (cfg.distill: objective,
        # weights, combine, logit cache), when the compressed model is a distilled student.
        ft_teachers = [t.model for t in teachers] if cfg.compress_source == "distilled" else []
        cm = compress(base, cfg.compress, data, seed=seed, finetune_cfg=cfg.train, teachers=ft_teachers, distill=cfg.distill,
                      cache_dir=cfg.data.cache_dir, threads=cfg.eval.latency_threads, progress=ctx.progress)
        compress_time = time.perf_counter() - t0
        metrics = evaluate_run(cm.model, data, cfg, teachers=[t.model for t in teachers], teacher_weights=cfg.distill.teacher_weights,
                               combine=cfg.distill.combine, with_deployment=False, cache=ctx.cache)
        task = build_task(cfg.task)
        metrics.update(compressed_deployment_metrics(cm, data.input_shape, repeats=cfg.eval.latency_repeats, threads=cfg.eval.latency_threads,
                                                     example=lambda b: task.example_input(data.input_shape, b)))
        metrics.update(cm.extra)
        metrics["compress_time_s"] = compress_time
        if run is not None:
            run.log_metrics(metrics)
            run.set_tags({f"compress.{k}": v for k, v in cm.tags.items()} | {"format": cm.format.name})
            run.log_deployable(cm)
            if cfg.tracking.log_model and cm.format.whole_module:
                run.log_model(cm.model, input_example=data.test.x[:2])
    return RunResult(role, seed, run.run_id if run is not None else None, metrics, cm.model)


def run_distillation(
    cfg: RunConfig,
    tracker: Tracker,
    *,
    seeds: Sequence[int],
    config_path: str | Path | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """The single-run job: teachers, the student alone (if ``cfg.baseline``), the distilled student."""
    data = load_run_data(cfg, progress=progress)
    results: list[RunResult] = []
    teachers = obtain_teachers(cfg, data, tracker, config_path=config_path, progress=progress, on_trained=results.append)
    for t in teachers:
        if t.reused and t.run_id and not any(r.run_id == t.run_id for r in results):
            results.append(RunResult("teacher", -1, t.run_id, _finished_metrics(tracker, t.run_id)))
    ctx = RunContext(tracker, config_path=config_path, progress=progress, cache=TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits"))
    for seed in seeds:
        if cfg.baseline:
            results.append(train_student(cfg, data, ctx, seed=seed))
        results.append(train_student(cfg, data, ctx.replace(role="distill"), seed=seed, teachers=teachers))
    return results


def summarize(results: Sequence[RunResult],
              metrics: Sequence[str] = ("test_accuracy", "test_errors", "test_wer", "test_per", "params", "train_time_s"),
              ) -> list[dict[str, Any]]:
    """One row per role: mean and sample standard deviation over seeds."""
    rows = []
    for role in dict.fromkeys(r.role for r in results):
        group = [r for r in results if r.role == role]
        row: dict[str, Any] = {"role": role, "runs": len(group)}
        for m in metrics:
            vals = [r.metrics[m] for r in group if m in r.metrics]
            if vals:
                row[m], row[m + "_std"] = mean_std(vals)
        rows.append(row)
    return rows


def _finished_metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    return dict(tracker.get_run(run_id).data.metrics)
