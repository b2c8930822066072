"""The default study, measured: best trial against the enqueued defaults, the
finalized test figures, wall time, the share of time spent logging to MLflow,
and trials per hour with 1 and with 2 worker processes.

    python benchmarks/study_throughput.py [--trials 30] [--workdir DIR]

Runs in a fresh folder (its own mlruns/), so the figures do not mix with the
project's store; the teacher is trained once and reused by the second study.
Writes benchmarks/results/study_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "mnist1d_kd.yaml"


def research(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "research.cli", *args], cwd=cwd, check=True)
    return time.perf_counter() - t0


def trial_phase(study) -> tuple[float, list]:
    """Seconds from the first trial's start to the last trial's end, and the finished trials."""
    done = [t for t in study.trials if t.datetime_complete is not None]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    return (end - start).total_seconds(), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3, help="seeds for finalize")
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a new temporary one)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from an earlier run in --workdir")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "study_throughput.md")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="study_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import optuna

    from research.stats import format_mean_std, state_counts
    from research.sweep import best_trials

    walls_file = work / "walls.json"
    if args.report_only:
        walls = {k if not k.isdigit() else int(k): v for k, v in json.loads(walls_file.read_text()).items()}
    else:
        walls = {}
        for workers in (1, 2):
            name = f"kd_bench_w{workers}"
            walls[workers] = research("study", "run", str(STUDY), "--n-trials", str(args.trials), "--workers", str(workers),
                                      "--set", f"name={name}", "--no-progress", cwd=work)
        walls["finalize"] = research("study", "finalize", "kd_bench_w1", "--seeds", str(args.seeds), "--no-progress", cwd=work)
        walls_file.write_text(json.dumps(walls))

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))
    lines = [
        "# The default study, measured",
        "",
        f"- command: `python benchmarks/study_throughput.py --trials {args.trials}`; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}; study file `studies/mnist1d_kd.yaml`",
        "",
        "| workers | trials | complete / pruned / failed | wall of the command, s | trial phase, s | trials per hour | MLflow logging share of trial time |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    studies = {}
    for workers in (1, 2):
        study = optuna.load_study(study_name=f"kd_bench_w{workers}", storage=storage)
        studies[workers] = study
        phase, done = trial_phase(study)
        counts = state_counts(t.state for t in done)
        complete = [t for t in done if t.state.name == "COMPLETE"]  # pruned trials end before their final logging
        logging_s = sum(t.user_attrs.get("tracking_time_s") or 0.0 for t in complete)
        busy_s = sum(t.duration.total_seconds() for t in complete)
        lines.append(f"| {workers} | {len(done)} | {counts['COMPLETE']} / {counts['PRUNED']} / {counts['FAIL']} | "
                     f"{walls[workers]:.0f} | {phase:.0f} | {3600 * len(done) / phase:.0f} | {100 * logging_s / busy_s:.1f} % |")
    lines += ["", "MLflow share: time inside the trial runs' MLflow calls (params, per-epoch metrics, final metrics, weights, "
                  "config) over the complete trials' own durations. Wall of the command: the first study also trains the "
                  "teacher (200 epochs) and generates the transfer set; the second reuses both.", ""]

    study = studies[1]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = best_trials(study, 1)[0]
    defaults = [t for t in complete if t.user_attrs.get("enqueued")]
    lines += ["## Best trial against the enqueued defaults (1-worker study)", "",
              "| | trial | temperature | alpha | val accuracy | test accuracy (reported, not used) |", "|---|---:|---:|---:|---:|---:|"]
    for label, t in [("best", best)] + [("enqueued default", t) for t in defaults]:
        lines.append(f"| {label} | {t.number} | {t.params['temperature']:.3g} | {t.params['alpha']:.3g} | {t.value:.4f} | "
                     f"{t.user_attrs.get('test_accuracy', float('nan')):.4f} |")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"]).data.metrics
    lines += ["", f"## Finalized on train+val, {args.seeds} seeds, test accuracy (`research study finalize kd_bench_w1 --seeds {args.seeds}`, "
                  f"{walls['finalize']:.0f} s)", "", "| config | from trial | test accuracy |", "|---|---:|---|"]
    for label in ("best", "default"):
        key = f"final_{label}_test_accuracy_mean"
        if key in parent:
            lines.append(f"| {label} | {int(parent[f'final_{label}_trial'])} | {format_mean_std(parent[key], parent[f'final_{label}_test_accuracy_std'], scale=100, unit=' %')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out}; runs in {work}")


if __name__ == "__main__":
    main()
