"""The ``research`` command: parses, validates, calls the library, prints.

Bad input exits with code 2 and one line naming what is wrong, before
anything is written (no MLflow run, no files).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .stats import format_mean_std

EXIT_BAD_INPUT = 2
EXIT_STORE = 1  # the tracking store could not be written (full disk, read-only)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (YAML), e.g. studies/mnist1d_distill.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, dotted path, value parsed as YAML (repeatable), e.g. --set distill.temperature=8",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="research",
        description="Knowledge-distillation workbench: train teachers, distil students, track every run in MLflow.",
        epilog="Tracking goes to $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db; open it with `research ui`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train-teacher", help="train the config's teachers and log each as an MLflow run",
                       description="Train every teacher of CONFIG on its labelled training split and log it (model included) to MLflow.")
    _add_config_args(p)

    p = sub.add_parser("distill", help="teacher(s), the student alone and the distilled student, with a results table",
                       description="Get the teachers (reused when an identical one was trained before), train the student alone "
                                   "and distilled, evaluate all on the test split and print a table. Every run is logged to MLflow.")
    _add_config_args(p)
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="student seeds (default: the config's seed); mean and spread are shown")

    p = sub.add_parser("compress", help="a compression baseline (prune, quantize, low-rank, ONNX, transfer) measured like a distillation run",
                       description="Compress the config's teacher (or a distilled or fresh student, see compress_source) with the "
                                   "config's compress: section, evaluate it like a distillation run and log it to MLflow.")
    _add_config_args(p)
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds (default: the config's seed)")

    p = sub.add_parser("compare", help="distillation and every compression baseline side by side at matched budgets",
                       description="Run every method of the config's compare: section at each budget (x fewer parameters than "
                                   "the teacher) and seed into one MLflow experiment, then write the table and Pareto charts.")
    _add_config_args(p)
    p.add_argument("--out", help="folder for the table and charts (default: reports/NAME)")

    _add_study_parsers(sub)
    _add_reproduce_parser(sub)

    p = sub.add_parser("ui", help="start the MLflow UI on this project's tracking store",
                       description="Start the MLflow UI over the tracking store on 127.0.0.1; Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")

    p = sub.add_parser("server", help="an MLflow tracking server that workers on several machines log to over HTTP",
                       description="Start `mlflow server` over a database (PostgreSQL for several machines) with artifacts "
                                   "proxied into a folder; workers then set MLFLOW_TRACKING_URI=http://HOST:PORT. Ctrl-C stops it.")
    p.add_argument("--backend-store-uri", required=True, help="e.g. postgresql://user:pw@db/mlflow (its own database or schema)")
    p.add_argument("--artifacts", default="mlruns/server-artifacts", help="folder (or URI) for the artifacts (default: mlruns/server-artifacts)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for other machines)")

    p = sub.add_parser("dashboard", help="optuna-dashboard over a study's storage",
                       description="Serve optuna-dashboard on 127.0.0.1 over the storage that holds study NAME (resolved as "
                                   "the `research study` commands do); Ctrl-C stops it.")
    p.add_argument("name", help="an existing study in that storage")
    p.add_argument("--storage", help="Optuna storage: a journal file path or a database URL (default: mlruns/optuna/journal.log)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    return parser


def _add_study_parsers(sub) -> None:
    study = sub.add_parser("study", help="Optuna studies over temperature, alpha and teacher weights (run, resume, list, report, finalize)",
                           description="Optuna studies whose every trial is an MLflow child run of one parent run per study.")
    ssub = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    storage_help = "Optuna storage: a journal file path or a database URL such as postgresql://user:pw@host/db (default: the study file's storage, else mlruns/optuna/journal.log)"

    p = ssub.add_parser("run", help="create (or join) a study from a study file and run its trials",
                        description="Validate STUDY.yaml, train its teachers once, create the study with its MLflow parent run, "
                                    "enqueue the published defaults, run the trials, then log the best trial and the plots.")
    _add_config_args(p)
    p.add_argument("--n-trials", type=int, help="trials to run now (default: up to the study file's n_trials in all; "
                   "a study already joined by other processes or machines stops there too)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (CPU threads are split between them)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--population", type=int, help="trials trained together in one stacked pass (default: the study file's population, 1)")

    p = ssub.add_parser("resume", help="continue a study until it has its n_trials finished trials (or N more)",
                        description="Continue study NAME with the config it was created with; trial numbers continue and finished trials are kept.")
    p.add_argument("name")
    p.add_argument("--n-trials", type=int, help="run this many more trials (default: up to the study's n_trials)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--population", type=int, default=1, help="trials trained together in one stacked pass (default 1)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--timeout", type=float)
    p.add_argument("--no-progress", action="store_true")

    p = ssub.add_parser("list", help="the studies in a storage, with their trial counts and best values")
    p.add_argument("--storage", help=storage_help)

    p = ssub.add_parser("report", help="markdown table and PNG plots of a study into a folder and onto its parent run")
    p.add_argument("name")
    p.add_argument("--out", help="folder for report.md and the plots (default: reports/NAME)")
    p.add_argument("--storage", help=storage_help)

    p = ssub.add_parser("finalize", help="retrain the best configuration on the whole training split with several seeds; test mean and spread",
                        description="Retrain the best trial's configuration (and the first enqueued default, for comparison) on train+val "
                                    "with --seeds seeds, evaluate on the test split, and log mean and spread to the study's parent run.")
    p.add_argument("name")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--no-default", action="store_true", help="do not also finalize the enqueued default")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--no-progress", action="store_true")

    p = ssub.add_parser("worker", help=argparse.SUPPRESS)  # started by `study run --workers N`
    p.add_argument("name")
    p.add_argument("--storage", required=True)
    p.add_argument("--n-trials", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float)
    p.add_argument("--target", type=int, default=None)  # the study's finished trials at which every worker stops
    p.add_argument("--worker-index", type=int, default=0)  # with --started: seeds its sampler apart (sweep.sampler_seed)
    p.add_argument("--started", type=int, default=0)
    p.add_argument("--population", type=int, default=1)


REPRODUCE_BUDGETS = """default budgets, each under an hour for 3 seeds on 2 CPU cores (torch threads 1):
  mnist1d       ensemble of 5 of the paper's CNNs x 200 epochs; the paper's MLP alone 200 epochs and
                distilled 100 epochs with a 50,000-sample transfer set (T=4, alpha=0.1).
                Measured: 23.8 min for 3 seeds (2026-11-29, machine shared with other work)
  hinton-mnist  small CNN teacher (dropout, 2-pixel jitter) 30 epochs; the paper's 784-800-800-10
                student alone and distilled 20 epochs (T=4, alpha=0.1).
                Measured: 25.1 min for 3 seeds (2026-11-29, machine shared with other work)
settings and why: studies/reproduce/NAME.yaml. --full: the papers' budgets (the setting's
reproduce.full overrides; hinton-mnist then uses the paper's 1200-1200 MLP teacher and T=20), for a GPU."""


def _add_reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="a paper's table (teacher, student alone, distilled) over seeds beside the published numbers",
                       description="Train the teacher, the student alone and the distilled student of a paper setting "
                                   "(studies/reproduce/NAME.yaml) for each seed under one MLflow parent run, and write the "
                                   "paper's table (mean ± sd) beside the published numbers to reports/reproduce-NAME.md and "
                                   ".csv. Resumable: runs finished under the same parent and config are not redone.",
                       epilog=REPRODUCE_BUDGETS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="hinton-mnist or mnist1d (or a setting YAML path)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--full", action="store_true", help="the papers' budgets (for a GPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a setting value")
    p.add_argument("--out", default="reports", help="folder for reproduce-NAME.md and .csv (default: reports)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        _positive(args.seeds, "--seeds")
        from .reproduce import load_setting

        cfg = load_setting(args.name, args.overrides, full=args.full)
    except ConfigError as e:
        return _fail(str(e))
    from .reproduce import format_table, log_report, reproduce, write_report
    from .tracking import Tracker

    name = cfg.name
    tracker = Tracker(cfg.tracking.uri)
    out = reproduce(name, cfg, tracker, seeds=list(range(args.seeds)), progress=not args.no_progress)
    command = " ".join(["research reproduce", args.name, f"--seeds {args.seeds}", *(["--full"] if args.full else []),
                        *(f"--set {o}" for o in args.overrides)])
    paths = write_report(out, args.out, command=command)
    log_report(tracker, out, paths)
    print(f"{cfg.reproduce.paper}\n")
    print(format_table(out))
    print(f"\n{out.trained} runs trained, {out.reused} found done; {out.wall_s / 60:.1f} min. Wrote {paths[0]} and {paths[1]}")
    _print_ui_hint(tracker)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .signals import exit_code, interrupt_on_signals

    try:
        # SIGTERM/SIGHUP clean up as Ctrl-C does (runs KILLED, trials closed); a second signal exits at once.
        with interrupt_on_signals():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e})" if str(e) else "interrupted", file=sys.stderr)
        return exit_code(e)
    except Exception as e:
        # A model that does not fit the data (classes, a tuple output without teachers.N.output) is
        # bad input, found by the pipeline before anything trains. Looked up, not imported: the
        # module (torch) is loaded only by commands that build models.
        outputs = sys.modules.get("research.models.outputs")
        if outputs is not None and isinstance(e, outputs.ModelOutputError):
            return _fail(str(e))
        tracking = sys.modules.get("research.tracking")
        if tracking is not None:  # a full disk or a read-only store: not bad input, and no traceback either
            if isinstance(e, tracking.TrackingWriteError):
                return _fail(str(e), EXIT_STORE)
            reason = tracking.write_error_reason(e)  # e.g. the study journal, the data cache
            if reason is not None:
                return _fail(f"cannot write: {reason} (free disk space or make the folder writable)", EXIT_STORE)
        raise


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"research: error: {msg}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace):
    from .config import load_run_config

    return load_run_config(args.config, args.overrides)


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        cfg = _load(args)
        if not cfg.teachers or all(t.model is None for t in cfg.teachers):
            raise ConfigError(f"{args.config}: teachers: no teacher to train (give teachers with a model)")
    except ConfigError as e:
        return _fail(str(e))
    from .pipeline import RunContext, load_run_data, train_teacher
    from .tasks import build_task
    from .tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=not args.no_progress)
    for i, tc in enumerate(cfg.teachers):
        if tc.model is None:
            continue
        _, result = train_teacher(tc, data, cfg, RunContext(tracker, config_path=args.config, progress=not args.no_progress), index=i)
        metric = build_task(cfg.task).validation_metric  # accuracy for classification, wer for g2p
        print(f"teacher {i} ({tc.model.name}): test {metric} {result.metrics[f'test_{metric}']:.4f}, "
              f"run {result.run_id}, model runs:/{result.run_id}/model")
    _print_ui_hint(tracker)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        cfg = _load(args)
        if cfg.student is None:
            raise ConfigError(f"{args.config}: student: a student model is required")
        if not cfg.teachers:
            raise ConfigError(f"{args.config}: teachers: at least one teacher is required")
    except ConfigError as e:
        return _fail(str(e))
    from .pipeline import run_distillation, summarize
    from .tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    seeds = args.seeds or [cfg.seed]
    results = run_distillation(cfg, tracker, seeds=seeds, config_path=args.config, progress=not args.no_progress)
    print(format_table(summarize(results)))
    _print_ui_hint(tracker)
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .config.run import compress_unsupported

    try:
        cfg = _load(args)
        if (why := compress_unsupported(cfg.task)) is not None:  # before the compress: section, which a g2p config lacks
            raise ConfigError(f"{args.config}: {why}")
        if cfg.compress is None:
            raise ConfigError(f"{args.config}: compress: this command needs a compress: section (method, sparsity, ...)")
    except ConfigError as e:
        return _fail(str(e))
    from .pipeline import RunContext, compress_run, load_run_data, obtain_teachers, summarize
    from .tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=not args.no_progress)
    results = []
    teachers = obtain_teachers(cfg, data, tracker, config_path=args.config, progress=not args.no_progress, on_trained=results.append)
    for seed in args.seeds or [cfg.seed]:
        results.append(compress_run(cfg, data, RunContext(tracker, config_path=args.config, progress=not args.no_progress), seed=seed, teachers=teachers))
    print(format_table(summarize(results)))
    _print_ui_hint(tracker)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_compare_config

    try:
        cfg = load_compare_config(args.config, args.overrides)
    except ConfigError as e:
        return _fail(str(e))
    from .compare import run_comparison

    out = Path(args.out or Path("reports") / cfg.name)
    table_path = run_comparison(cfg, out, config_path=args.config, progress=not args.no_progress)
    print(table_path.read_text())
    print(f"wrote {table_path} and the Pareto charts beside it")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal

    from .mlflow_servers import start_ui, stop_ui, wait_for_ui
    from .tracking import default_tracking_uri, mask_url

    uri = default_tracking_uri()
    proc = start_ui(uri, args.host, args.port)
    # `kill` (SIGTERM) stops it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if wait_for_ui(proc, args.host, args.port):
            print(f"MLflow UI at http://{args.host}:{args.port} over {mask_url(uri)}  (Ctrl-C stops it)", flush=True)
        else:
            return _fail(f"the MLflow UI did not start on {args.host}:{args.port} (is the port in use?)", 1)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_ui(proc)
        print("MLflow UI stopped", flush=True)


def cmd_server(args: argparse.Namespace) -> int:
    from .mlflow_servers import start_server, stop_ui, wait_for_ui
    from .tracking import mask_url

    proc = start_server(args.backend_store_uri, args.artifacts, args.host, args.port)
    try:
        if not wait_for_ui(proc, args.host, args.port):
            return _fail(f"the MLflow server did not start on {args.host}:{args.port} over {mask_url(args.backend_store_uri)}", 1)
        print(f"MLflow server at http://{args.host}:{args.port} over {mask_url(args.backend_store_uri)}; "
              f"workers: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (research.signals)
        return 0
    finally:
        stop_ui(proc)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain text table: mean ± std over seeds for each role."""
    cols = [("role", "run"), ("runs", "n"), ("test_accuracy", "test acc"), ("test_errors", "test errors"),
            ("params", "params"), ("train_time_s", "train s")]
    if any("test_wer" in r for r in rows):  # a sequence task: error rates instead of accuracy
        cols[2:4] = [("test_wer", "test WER"), ("test_per", "test PER")]
    lines = []
    header = [title for _, title in cols]
    body = []
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if key in ("role", "runs"):
                cells.append(str(v))
            elif v is None:
                cells.append("-")
            elif key in ("test_accuracy", "test_wer", "test_per"):
                cells.append(format_mean_std(v, r.get(key + "_std"), scale=100, unit=" %"))
            elif key == "params":
                cells.append(f"{v:,.0f}")
            else:
                cells.append(format_mean_std(v, r.get(key + "_std"), digits=1))
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(c) for c in body)
    return "\n".join(lines)


def _print_ui_hint(tracker) -> None:
    from .tracking import mask_url

    uri = mask_url(tracker.uri)
    if uri.startswith("sqlite:///"):
        rel = os.path.relpath(uri.removeprefix("sqlite:///"))
        uri = f"sqlite:///{rel}"
    print(f"\nSee every run: research ui   (or: mlflow ui --backend-store-uri {uri})")


def cmd_study(args: argparse.Namespace) -> int:
    from .config import ConfigError

    action = args.study_command
    try:
        if action == "run":
            return _study_run(args)
        if action == "resume":
            return _study_resume(args)
        if action == "list":
            return _study_list(args)
        if action == "report":
            return _study_report(args)
        if action == "finalize":
            return _study_finalize(args)
        if action == "worker":
            from .sweep import worker_main

            worker_main(args.name, args.storage, args.n_trials, args.threads, args.timeout, worker=args.worker_index, started=args.started,
                        target=args.target, population=args.population)
            return 0
    except ConfigError as e:
        return _fail(str(e))
    except _study_errors() as e:
        return _fail(str(e))
    except _worker_error() as e:  # not bad input: exit 1, still one line
        return _fail(str(e), 1)
    raise AssertionError(action)


def _study_errors():
    from .sweep import StudyError

    return (StudyError,)


def _worker_error():
    from .sweep import WorkerError

    return WorkerError


def _positive(value: int | None, flag: str) -> None:
    from .config import ConfigError

    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}")


def _study_run(args: argparse.Namespace) -> int:
    from .config import load_study_config

    cfg = load_study_config(args.config, args.overrides)
    _positive(args.n_trials, "--n-trials")
    _positive(args.workers, "--workers")
    _positive(args.population, "--population")
    from . import sweep
    from .tracking import Tracker

    sweep.check_search_values(cfg)  # a searched value no trial can use: refused before anything is made

    storage = sweep.storage_url(args.storage or cfg.storage)
    sweep.check_storage(storage)
    tracker = Tracker(cfg.tracking.uri)
    from .pipeline import check_models, load_run_data

    data = load_run_data(cfg, progress=not args.no_progress)  # loaded once: checked here, trained on by the study
    check_models(cfg, data, tracker)  # models that do not fit the data: before the study exists
    study = sweep.create_or_join(cfg, tracker, storage, config_path=args.config)
    _recover(study, tracker)
    # Joining a study (another machine's, or one run before): up to its n_trials in all.
    done = sweep.count_finished(study)
    n = args.n_trials or cfg.n_trials - done
    if n <= 0:
        print(f"study {cfg.name!r} already has {done} finished trials of its {cfg.n_trials}; "
              f"`research study resume {cfg.name} --n-trials N` runs more")
        return 0
    return _run_and_summarize(cfg, study, storage, tracker, n_trials=n, workers=args.workers,
                              timeout=args.timeout or cfg.timeout_s, progress=not args.no_progress, data=data,
                              population=args.population or cfg.population)


def _study_resume(args: argparse.Namespace) -> int:
    _positive(args.n_trials, "--n-trials")
    _positive(args.workers, "--workers")
    _positive(args.population, "--population")
    from . import sweep
    from .tracking import Tracker

    storage = sweep.storage_url(args.storage)
    study, cfg = sweep.load_existing(args.name, storage)
    tracker = Tracker(study.user_attrs.get(sweep.ATTR_TRACKING_URI) or cfg.tracking.uri)
    _recover(study, tracker)  # before counting: a dead worker's trial is lost, not finished
    done = sweep.count_finished(study)
    n = args.n_trials or cfg.n_trials - done
    if n <= 0:
        print(f"study {args.name!r} already has {done} finished trials of its {cfg.n_trials}; use --n-trials N to run more")
        return 0
    tracker.reopen(study.user_attrs[sweep.ATTR_PARENT])
    print(f"resuming {args.name!r}: {done} finished trials kept, {n} more to run")
    return _run_and_summarize(cfg, study, storage, tracker, n_trials=n, workers=args.workers, timeout=args.timeout, progress=not args.no_progress,
                              population=args.population)


def _recover(study, tracker) -> None:
    from . import sweep

    done = sweep.recover(study, tracker)
    if done.failed:
        print(f"failed {len(done.failed)} trial(s) whose worker is gone: {done.failed}", file=sys.stderr)
    if done.runs_closed:
        print(f"closed {len(done.runs_closed)} MLflow run(s) left RUNNING by them (FAILED)", file=sys.stderr)
    if done.requeued:
        print(f"enqueued again the default(s) lost with trial(s) {done.requeued}", file=sys.stderr)


def _run_and_summarize(cfg, study, storage, tracker, *, n_trials, workers, timeout, progress, data=None, population=1) -> int:
    import time

    from . import sweep

    t0 = time.perf_counter()
    try:
        sweep.launch(cfg, study, storage, n_trials=n_trials, workers=workers, timeout_s=timeout, progress=progress, data=data,
                     population=population)
    except BaseException:
        parent = study.user_attrs.get(sweep.ATTR_PARENT)
        if parent:  # the parent run must not stay RUNNING forever
            tracker.end(tracker.handle(parent), "KILLED")
        raise
    summary = sweep.finish_study(tracker, study, cfg)
    wall = time.perf_counter() - t0
    print(sweep.format_study_summary(cfg, sweep.trials_table(study), wall, best_trial=summary.get("best_trial")))
    _print_ui_hint(tracker)
    print(f"Report with plots: research study report {cfg.name}{_storage_flag(storage)};  "
          f"test figures: research study finalize {cfg.name} --seeds 3{_storage_flag(storage)}")
    return 0


def _storage_flag(storage: str) -> str:
    from .sweep import DEFAULT_JOURNAL
    from .tracking import mask_url

    return "" if storage == str(DEFAULT_JOURNAL) else f" --storage {mask_url(storage)}"


def _study_list(args: argparse.Namespace) -> int:
    from . import sweep

    print(sweep.format_study_list(sweep.list_studies(sweep.storage_url(args.storage))))
    return 0


def _study_report(args: argparse.Namespace) -> int:
    from . import sweep

    out = Path(args.out or Path("reports") / args.name)
    written = sweep.write_study_report(args.name, sweep.storage_url(args.storage), out)
    print(f"wrote {written.markdown} and {len(written.figures)} plots; also on MLflow run {written.parent_run_id} under report/")
    return 0


def _study_finalize(args: argparse.Namespace) -> int:
    _positive(args.seeds, "--seeds")
    from . import sweep

    study, cfg = sweep.load_existing(args.name, sweep.storage_url(args.storage))
    out = sweep.finalize(study, cfg, seeds=list(range(args.seeds)), include_default=not args.no_default, progress=not args.no_progress)
    print(sweep.format_finalize(cfg, out))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from . import sweep

    try:
        sweep.serve_dashboard(args.name, sweep.storage_url(args.storage), host=args.host, port=args.port,
                              announce=lambda line: print(line, flush=True))
    except sweep.StudyError as e:
        return _fail(str(e))
    except OSError as e:  # the port is taken or cannot be bound
        return _fail(f"optuna-dashboard cannot listen on {args.host}:{args.port}: {e.strerror or e}", 1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (research.signals)
        pass
    return 0


COMMANDS = {"train-teacher": cmd_train_teacher, "distill": cmd_distill, "compress": cmd_compress, "compare": cmd_compare,
            "study": cmd_study, "ui": cmd_ui, "server": cmd_server, "dashboard": cmd_dashboard, "reproduce": cmd_reproduce}


if __name__ == "__main__":
    raise SystemExit(main())
