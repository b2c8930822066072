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

EXIT_BAD_INPUT = 2


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

    p = sub.add_parser("ui", help="start the MLflow UI on this project's tracking store",
                       description="Start the MLflow UI over the tracking store on 127.0.0.1; Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=5000)
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
    p.add_argument("--n-trials", type=int, help="trials to run now (default: the study file's n_trials)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (CPU threads are split between them)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")

    p = ssub.add_parser("resume", help="continue a study until it has its n_trials finished trials (or N more)",
                        description="Continue study NAME with the config it was created with; trial numbers continue and finished trials are kept.")
    p.add_argument("name")
    p.add_argument("--n-trials", type=int, help="run this many more trials (default: up to the study's n_trials)")
    p.add_argument("--workers", type=int, default=1)
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
    p.add_argument("--worker-index", type=int, default=0)  # with --started: seeds its sampler apart (sweep.sampler_seed)
    p.add_argument("--started", type=int, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


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
    from .pipeline import load_run_data, train_teacher
    from .tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=not args.no_progress)
    for i, tc in enumerate(cfg.teachers):
        if tc.model is None:
            continue
        _, result = train_teacher(tc, data, cfg, tracker, index=i, config_path=args.config, progress=not args.no_progress)
        print(f"teacher {i} ({tc.model.name}): test accuracy {result.metrics['test_accuracy']:.4f}, "
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

    try:
        cfg = _load(args)
        if cfg.compress is None:
            raise ConfigError(f"{args.config}: compress: this command needs a compress: section (method, sparsity, ...)")
    except ConfigError as e:
        return _fail(str(e))
    from .pipeline import compress_run, load_run_data, obtain_teachers, summarize
    from .tracking import Tracker

    tracker = Tracker(cfg.tracking.uri)
    data = load_run_data(cfg, progress=not args.no_progress)
    results = []
    teachers = obtain_teachers(cfg, data, tracker, config_path=args.config, progress=not args.no_progress, on_trained=results.append)
    for seed in args.seeds or [cfg.seed]:
        results.append(compress_run(cfg, data, tracker, seed=seed, teachers=teachers, config_path=args.config, progress=not args.no_progress))
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

    from .tracking import default_tracking_uri, start_ui, stop_ui, wait_for_ui

    uri = default_tracking_uri()
    proc = start_ui(uri, args.host, args.port)
    # `kill` (SIGTERM) stops it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if wait_for_ui(proc, args.host, args.port):
            print(f"MLflow UI at http://{args.host}:{args.port} over {uri}  (Ctrl-C stops it)", flush=True)
        else:
            return _fail(f"the MLflow UI did not start on {args.host}:{args.port} (is the port in use?)", 1)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_ui(proc)
        print("MLflow UI stopped", flush=True)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain text table: mean ± std over seeds for each role."""
    cols = [("role", "run"), ("runs", "n"), ("test_accuracy", "test acc"), ("test_errors", "test errors"),
            ("params", "params"), ("train_time_s", "train s")]
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
            elif key == "test_accuracy":
                cells.append(f"{100 * v:.2f} ± {100 * r.get(key + '_std', 0):.2f} %")
            elif key == "params":
                cells.append(f"{v:,.0f}")
            else:
                cells.append(f"{v:.1f} ± {r.get(key + '_std', 0):.1f}")
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(c) for c in body)
    return "\n".join(lines)


def _print_ui_hint(tracker) -> None:
    uri = tracker.uri
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

            worker_main(args.name, args.storage, args.n_trials, args.threads, args.timeout, worker=args.worker_index, started=args.started)
            return 0
    except ConfigError as e:
        return _fail(str(e))
    except _study_errors() as e:
        return _fail(str(e))
    raise AssertionError(action)


def _study_errors():
    from .sweep import StudyError

    return (StudyError,)


def _positive(value: int | None, flag: str) -> None:
    from .config import ConfigError

    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}")


def _study_run(args: argparse.Namespace) -> int:
    from .config import load_study_config

    cfg = load_study_config(args.config, args.overrides)
    _positive(args.n_trials, "--n-trials")
    _positive(args.workers, "--workers")
    from . import sweep
    from .tracking import Tracker

    storage = sweep.storage_url(args.storage or cfg.storage)
    sweep.check_storage(storage)
    tracker = Tracker(cfg.tracking.uri)
    study = sweep.create_or_join(cfg, tracker, storage, config_path=args.config)
    return _run_and_summarize(cfg, study, storage, tracker, n_trials=args.n_trials or cfg.n_trials, workers=args.workers,
                              timeout=args.timeout or cfg.timeout_s, progress=not args.no_progress)


def _study_resume(args: argparse.Namespace) -> int:
    _positive(args.n_trials, "--n-trials")
    _positive(args.workers, "--workers")
    from . import sweep
    from .tracking import Tracker

    storage = sweep.storage_url(args.storage)
    study, cfg = sweep.load_existing(args.name, storage)
    done = sweep.count_finished(study)
    n = args.n_trials or cfg.n_trials - done
    if n <= 0:
        print(f"study {args.name!r} already has {done} finished trials of its {cfg.n_trials}; use --n-trials N to run more")
        return 0
    tracker = Tracker(study.user_attrs.get(sweep.ATTR_TRACKING_URI) or cfg.tracking.uri)
    tracker.reopen(study.user_attrs[sweep.ATTR_PARENT])
    print(f"resuming {args.name!r}: {done} finished trials kept, {n} more to run")
    return _run_and_summarize(cfg, study, storage, tracker, n_trials=n, workers=args.workers, timeout=args.timeout, progress=not args.no_progress)


def _run_and_summarize(cfg, study, storage, tracker, *, n_trials, workers, timeout, progress) -> int:
    from . import sweep

    t0 = __import__("time").perf_counter()
    try:
        sweep.launch(cfg, study, storage, n_trials=n_trials, workers=workers, timeout_s=timeout, progress=progress)
    except BaseException:
        parent = study.user_attrs.get(sweep.ATTR_PARENT)
        if parent:  # the parent run must not stay RUNNING forever
            tracker.end(tracker.handle(parent), "KILLED")
        raise
    summary = sweep.finish_study(tracker, study, cfg)
    wall = __import__("time").perf_counter() - t0
    rows = sweep.trials_table(study)
    print(format_study_summary(cfg, rows, wall, best_trial=summary.get("best_trial")))
    _print_ui_hint(tracker)
    print(f"Report with plots: research study report {cfg.name}{_storage_flag(storage)};  "
          f"test figures: research study finalize {cfg.name} --seeds 3{_storage_flag(storage)}")
    return 0


def _storage_flag(storage: str) -> str:
    from .sweep import DEFAULT_JOURNAL

    return "" if storage == str(DEFAULT_JOURNAL) else f" --storage {storage}"


def format_study_summary(cfg, rows: list[dict[str, Any]], wall_s: float, *, best_trial: int | None = None) -> str:
    """Best trial against the enqueued defaults (validation metric; test shown, not used).
    ``best_trial``: the number sweep.best_trials chose (a multi-objective study's best is on
    its Pareto front); default: the best by the first objective."""
    obj = cfg.objectives[0]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    states = [r["state"] for r in rows]
    lines = [f"\nstudy {cfg.name}: {len(rows)} trials ({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
             f"{states.count('FAIL')} failed) in {wall_s:.0f} s"]
    if not done:
        return "\n".join(lines + ["no completed trial"])
    sign = -1 if obj.direction == "maximize" else 1
    chosen = [r for r in done if r["number"] == best_trial]
    best = chosen[0] if chosen else min(done, key=lambda r: (sign * r["values"][0], r["number"]))
    table = [("best", best)] + [("enqueued default", r) for r in done if r["enqueued"]]
    for label, r in table:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items() if not k.startswith("w_"))
        if r.get("teacher_weights"):
            params += ", weights=[" + ", ".join(f"{w:.2f}" for w in r["teacher_weights"]) + "]"
        test = f", test acc {r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else ""
        lines.append(f"  {label:<17} trial {r['number']:>3}: {obj.metric} {r['values'][0]:.4f}{test}  ({params})")
    return "\n".join(lines)


def _study_list(args: argparse.Namespace) -> int:
    from . import sweep

    rows = sweep.list_studies(sweep.storage_url(args.storage))
    if not rows:
        print("no studies")
        return 0
    header = ["study", "complete", "pruned", "failed", "running", "best", "experiment", "started"]
    body = [[r["name"], r["complete"], r["pruned"], r["failed"], r["running"], "-" if r["best"] is None else f"{r['best']:.4f}",
             r["experiment"], r["started"].strftime("%Y-%m-%d %H:%M") if r["started"] else "-"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    for cells in [header, *body]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    return 0


def _study_report(args: argparse.Namespace) -> int:
    from . import report, sweep
    from .tracking import Tracker

    storage = sweep.storage_url(args.storage)
    study, cfg = sweep.load_existing(args.name, storage)
    tracker = Tracker(study.user_attrs.get(sweep.ATTR_TRACKING_URI) or cfg.tracking.uri)
    parent_id = study.user_attrs[sweep.ATTR_PARENT]
    out = Path(args.out or Path("reports") / args.name)
    figures = sweep.study_figures(study, cfg)
    figures.update(report.study_run_figures(study.user_attrs.get(sweep.ATTR_EXPERIMENT, cfg.tracking.experiment), tracker.uri,
                                            objective=cfg.objectives[0].metric, direction=cfg.objectives[0].direction))
    files = report.figures_to_files(figures, out)
    md = report.study_markdown(
        args.name, sweep.trials_table(study), objective_names=[o.metric for o in cfg.objectives], directions=cfg.directions,
        parent_metrics=dict(tracker.get_run(parent_id).data.metrics), figure_files=files,
        settings={"sampler": cfg.sampler.name, "pruner": cfg.pruner.name, "searched": ", ".join(cfg.searched_names()),
                  "MLflow experiment": cfg.tracking.experiment, "parent run": parent_id},
        best_trial=next((t.number for t in sweep.best_trials(study, 1)), None),
    )
    (out / "report.md").write_text(md)
    handle = tracker.handle(parent_id)
    handle.log_text(md, "report/report.md")
    for f in files:
        handle.log_artifact(f, "report")
    sweep._close_figures(figures)  # pyplot keeps every figure open until closed
    print(f"wrote {out / 'report.md'} and {len(files)} plots; also on MLflow run {parent_id} under report/")
    return 0


def _study_finalize(args: argparse.Namespace) -> int:
    _positive(args.seeds, "--seeds")
    from . import sweep

    storage = sweep.storage_url(args.storage)
    study, cfg = sweep.load_existing(args.name, storage)
    seeds = list(range(args.seeds))
    out = sweep.finalize(study, cfg, seeds=seeds, include_default=not args.no_default, progress=not args.no_progress)
    for label, s in out.items():
        print(f"{label:<8} (trial {int(s['trial'])}): test accuracy {100 * s['test_accuracy_mean']:.2f} ± {100 * s['test_accuracy_std']:.2f} % "
              f"over {len(seeds)} seeds, trained on train+val")
    return 0


COMMANDS = {"train-teacher": cmd_train_teacher, "distill": cmd_distill, "compress": cmd_compress, "compare": cmd_compare,
            "study": cmd_study, "ui": cmd_ui}


if __name__ == "__main__":
    raise SystemExit(main())
