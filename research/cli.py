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

    p = sub.add_parser("ui", help="start the MLflow UI on this project's tracking store",
                       description="Start the MLflow UI over the tracking store on 127.0.0.1; Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    return parser


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


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from .tracking import default_tracking_uri

    uri = default_tracking_uri()
    print(f"MLflow UI at http://{args.host}:{args.port} over {uri} (Ctrl-C stops it)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        return 0


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


COMMANDS = {"train-teacher": cmd_train_teacher, "distill": cmd_distill, "ui": cmd_ui}


if __name__ == "__main__":
    raise SystemExit(main())
