"""Duplicate points in a study: how many trials repeat the parameters of an
earlier trial of the same study (enqueued points aside), for

- two worker processes sharing one journal file (``study run --workers 2``),
- a study run for N trials and then resumed for N more (``study resume``),

with the TPE sampler (the default), the random sampler and the grid sampler
(5 temperatures x 4 alphas), all seeded.

    python benchmarks/study_duplicates.py --label after [--trials 20] [--resume-trials 5]
    # the code before the fix, unpacked beside:
    git archive 3cdae22 research | tar -x -C /tmp/old
    python benchmarks/study_duplicates.py --label before --code /tmp/old --code-label 3cdae22

Each study is tiny (MNIST-1D, a 3-epoch teacher trained once, a 2-epoch
student, no pruning, no enqueued defaults) and runs in a fresh folder with its
own mlruns/. The counts of every label measured so far are kept in
benchmarks/results/study_duplicates.json and written as a table to
benchmarks/results/study_duplicates.md.

A duplicate is a trial whose parameters equal those of an earlier trial; the
count is (sampled trials) - (distinct parameter sets among them). With one
process it depends only on the samplers' seeds; with two workers also a little
on timing (which worker takes which trial, what TPE has seen by then).
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
RESULTS = REPO / "benchmarks" / "results"

STUDY = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn}}
    train: {{epochs: 3}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 2}}
eval: {{latency_repeats: 1}}
search:
  temperature: {{low: 1.0, high: 20.0, log: true}}
  alpha: {{low: 0.0, high: 1.0}}
enqueue: []
sampler: {sampler}
pruner: {{name: none}}
n_trials: {n_trials}
keep_models: 0
"""

SAMPLERS = {
    "tpe": "{name: tpe, seed: 0}",
    "random": "{name: random, seed: 0}",
    "grid": "{name: grid, seed: 0, grid: {temperature: [1.0, 2.0, 4.0, 8.0, 16.0], alpha: [0.0, 0.3, 0.6, 0.9]}}",
}


CODE = REPO  # the folder whose `research` package is measured (--code)


def research(*args: str, cwd: Path) -> float:
    """Run the CLI of the measured code (PYTHONPATH first, so its `research` package wins)."""
    env = dict(os.environ, PYTHONPATH=f"{CODE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "research.cli", *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def duplicates(study) -> tuple[int, int]:
    """(sampled trials, trials repeating an earlier trial's parameters), enqueued trials left out."""
    sampled = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("enqueued")]
    distinct = {tuple(sorted(t.params.items())) for t in sampled}
    return len(sampled), len(sampled) - len(distinct)


def measure(work: Path, trials: int, resume_trials: int) -> list[dict]:
    import optuna

    def load(name: str):  # the journal file exists once the first study has run
        backend = optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log"))
        return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))

    rows = []
    for sampler, spec in SAMPLERS.items():
        name = f"dup_workers_{sampler}"
        path = work / f"{name}.yaml"
        path.write_text(STUDY.format(name=name, cache=work / ".cache", sampler=spec, n_trials=trials))
        wall = research("study", "run", str(path), "--workers", "2", "--no-progress", cwd=work)
        n, dup = duplicates(load(name))
        rows.append({"case": f"{trials} trials, 2 workers, journal", "sampler": sampler, "trials": n, "duplicates": dup, "wall_s": wall})

        name = f"dup_resume_{sampler}"
        path = work / f"{name}.yaml"
        path.write_text(STUDY.format(name=name, cache=work / ".cache", sampler=spec, n_trials=resume_trials))
        wall = research("study", "run", str(path), "--no-progress", cwd=work)
        wall += research("study", "resume", name, "--n-trials", str(resume_trials), "--no-progress", cwd=work)
        n, dup = duplicates(load(name))
        rows.append({"case": f"{resume_trials} trials, then resumed for {resume_trials} more", "sampler": sampler, "trials": n,
                     "duplicates": dup, "wall_s": wall})
    return rows


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "research"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    return out.stdout.strip() + (" + uncommitted changes in research/" if dirty else "")


def write_markdown(results: dict, out: Path) -> str:
    lines = ["# Duplicate points in a study", "",
             ("A duplicate: a trial whose parameters equal an earlier trial's in the same study (enqueued points aside). "
              "Tiny studies (MNIST-1D, 3-epoch teacher, 2-epoch student, temperature and alpha searched, sampler seed 0, no pruning); "
              "`python benchmarks/study_duplicates.py --label LABEL`."), "",
             "| label | code | case | sampler | sampled trials | duplicates | wall, s |", "|---|---|---|---|---:|---:|---:|"]
    for label, entry in results.items():
        for r in entry["rows"]:
            lines.append(f"| {label} | {entry['code']} | {r['case']} | {r['sampler']} | {r['trials']} | {r['duplicates']} | {r['wall_s']:.0f} |")
    lines += ["", *[f"- {label}: {e['date']}, {e['machine']}" for label, e in results.items()], ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="name of this measurement in the table, e.g. before or after")
    parser.add_argument("--trials", type=int, default=20, help="trials of the two-worker study")
    parser.add_argument("--resume-trials", type=int, default=5, help="trials of the first run, and again of the resume")
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a new temporary one)")
    parser.add_argument("--code", type=Path, default=REPO, help="folder holding the research package to measure (default: this checkout)")
    parser.add_argument("--code-label", help="what --code is, for the table (default: this checkout's commit)")
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="study_dup_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = measure(work, args.trials, args.resume_trials)
    store = RESULTS / "study_duplicates.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    results[args.label] = {"code": args.code_label or commit(), "rows": rows, "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                           "machine": f"{platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(results, indent=1) + "\n")
    print(write_markdown(results, RESULTS / "study_duplicates.md"))
    print(f"\nruns in {work}")


if __name__ == "__main__":
    main()
