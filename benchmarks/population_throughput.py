"""The default study one trial at a time against populations of K trials trained in one stacked pass.

    OMP_NUM_THREADS=1 python benchmarks/population_throughput.py [--trials 16] [--epochs 3] [--populations 4 8 16]

Every study runs ``studies/mnist1d_kd.yaml`` with the same budget (``--trials`` trials of ``--epochs``
epochs, 1 worker, one torch thread) in a fresh folder (its own mlruns/); the teacher is trained once
(``--teacher-epochs``, short: the figures compare the study's ways of running, not the teacher) and
reused by the other studies. Trials per hour are over the trial phase (first trial's start to the
last trial's end, from Optuna's timestamps), quoted as ratios against the one-at-a-time study of the
same run; best validation accuracy should agree within noise (a population draws its K points from
the trials finished before its round, so its search differs from the sequential one). Writes
benchmarks/results/population_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from study_throughput import trial_phase  # the same measure as the one-at-a-time benchmark (run from benchmarks/)

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "mnist1d_kd.yaml"


def research(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "research.cli", *args], cwd=cwd, check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="student epochs per trial")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--populations", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "population_throughput.md")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="population_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import optuna

    from research.stats import state_counts

    common = ["--n-trials", str(args.trials), "--no-progress", "--set", f"train.epochs={args.epochs}",
              "--set", f"teachers.0.train.epochs={args.teacher_epochs}", "--set", "tracking.experiment=population_bench"]
    walls = {}
    for k in [1, *args.populations]:
        walls[k] = research("study", "run", str(STUDY), "--set", f"name=kd_pop{k}", "--population", str(k), *common, cwd=work)

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))
    rows, base = [], None
    for k in [1, *args.populations]:
        study = optuna.load_study(study_name=f"kd_pop{k}", storage=storage)
        phase, done = trial_phase(study)
        counts = state_counts(t.state for t in done)
        per_hour = 3600 * len(done) / phase
        best = max((t.value for t in done if t.state.name == "COMPLETE"), default=float("nan"))
        base = base or (per_hour, best)
        rows.append(f"| {k} | {len(done)} | {counts['COMPLETE']} / {counts['PRUNED']} / {counts['FAIL']} | {walls[k]:.0f} | {phase:.1f} | "
                    f"{per_hour:.0f} | {per_hour / base[0]:.2f}x | {best:.4f} | {best - base[1]:+.4f} |")
    lines = [
        "# A population of students per pass against one trial at a time",
        "",
        f"- command: `OMP_NUM_THREADS=1 python benchmarks/population_throughput.py --trials {args.trials} --epochs {args.epochs} "
        f"--teacher-epochs {args.teacher_epochs} --populations {' '.join(map(str, args.populations))}`; "
        f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}; 1 worker, 1 torch thread; "
        "study file `studies/mnist1d_kd.yaml` with the epochs above (a short budget: a smoke measurement, not the issue's 20 x 20)",
        "- measured on a shared, loaded machine (other jobs were using its 2 cores): the ratios are indicative only",
        "",
        "| population K | trials | complete / pruned / failed | wall of the command, s | trial phase, s | trials per hour | "
        "vs one at a time | best val accuracy | vs one at a time |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Trial phase: the first trial's start to the last trial's end (Optuna timestamps), so data loading and the teacher "
        "(trained by the first study only) are left out. A population's trials start together and end as each is logged "
        "after the round; per-trial logging and the final evaluation still run one trial after another.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out}; runs in {work}")


if __name__ == "__main__":
    main()
