"""Shared pieces of the study tests (tests/test_study*.py): a tiny study file
template, readers of the real stores (MLflow SQLite, Optuna journal) that do
not go through research.sweep, and an independent Pareto front."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

# MNIST-1D, a 3-epoch teacher, a 3-epoch student: a few seconds a study.
STUDY = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn}}
    train: {{epochs: 3, threads: 1}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 3, threads: 1}}
eval: {{latency_repeats: 1}}
search:
  temperature: {{low: 1.0, high: 20.0, log: true}}
  alpha: null
  params:
    train.lr: {{choices: [0.01, 1.0e-7, 1.0e+30]}}
enqueue:
  - {{temperature: 4.0, train.lr: 0.01}}     # a good trial first
  - {{temperature: 4.0, train.lr: 1.0e-7}}   # learns nothing: pruned at epoch 1 by the median rule
  - {{temperature: 4.0, train.lr: 1.0e+30}}  # diverges: the loss turns NaN, the trial fails
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 1, n_warmup_steps: 0}}
n_trials: 4
keep_models: 1
"""

# A plain search (temperature, alpha, a good lr) with no enqueued points and no
# pruning, so every trial completes; a small one-epoch teacher (its quality does
# not matter here, and each new MLflow experiment trains its own).
# The tiny study every study test starts from: a small one-epoch teacher, the MNIST-1D MLP
# student for two epochs on one thread (far faster for tiny models on a busy 2-core machine),
# and the temperature x alpha search; each test's template adds the rest.
TINY_STUDY = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn, args: {{channels: 8}}}}
    train: {{epochs: 1, threads: 1}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 2, threads: 1}}
eval: {{latency_repeats: 1}}
search:
  temperature: {{low: 1.0, high: 20.0, log: true}}
  alpha: {{low: 0.0, high: 1.0}}
"""

PLAIN = TINY_STUDY + """enqueue: []
sampler: {{name: {sampler}, seed: 0}}
pruner: {{name: none}}
n_trials: {n_trials}
keep_models: 1
"""


def write_study(dirpath: Path, name: str, cache: Path, template: str = STUDY, **fields) -> Path:
    path = dirpath / f"{name}.yaml"
    path.write_text(template.format(name=name, cache=cache, **fields))
    return path


def client_for(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")


def journal(work: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))


def load(work: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal(work))


def trial_runs(client: MlflowClient, study_name: str) -> list:
    exp = client.get_experiment_by_name(study_name)
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)


def all_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def sampled_params(study: optuna.Study) -> list[tuple]:
    """The parameters of every trial that the sampler drew (enqueued trials left out)."""
    return [tuple(sorted(t.params.items())) for t in study.get_trials() if not t.user_attrs.get("enqueued")]


def assert_no_repeated_point(study: optuna.Study) -> None:
    points = sampled_params(study)
    repeated = sorted({p for p in points if points.count(p) > 1})
    assert not repeated, f"{len(points) - len(set(points))} trial(s) repeat an earlier point: {repeated}"


def pareto_front(points: dict[int, tuple[float, ...]], directions: list[str]) -> set[int]:
    """Keys of the non-dominated points, by the definition (written here, not Optuna's):
    a dominates b when it is no worse in every objective and better in one."""
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dominates(a, b):
        a = [s * v for s, v in zip(signs, a)]
        b = [s * v for s, v in zip(signs, b)]
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return {k for k, v in points.items() if not any(dominates(w, v) for j, w in points.items() if j != k)}


@pytest.fixture(scope="session")
def study_cache(tmp_path_factory) -> Path:
    """One data cache (generated MNIST-1D, teacher logits keyed by the teacher's weights)
    for all study tests: it only saves time; every test still works from an empty one."""
    return tmp_path_factory.mktemp("study_cache")


@pytest.fixture(scope="module", autouse=True)
def keep_torch_threads():
    """The studies here train with one torch thread (set process-wide); give the other test
    modules back what they had. Autouse at module scope, so it wraps the module fixtures too."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def blank_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once by MLflow itself: creating one runs its
    schema migrations (several seconds here), copying one takes milliseconds. It holds
    no experiment yet, so no artifact location points into another test's folder."""
    path = tmp_path_factory.mktemp("blank_mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def chdir_to(mp: pytest.MonkeyPatch, work: Path, blank: Path | None = None) -> None:
    """Work in ``work`` with the default store (./mlruns); ``blank``: start from a copy of that empty store."""
    if blank is not None:
        (work / "mlruns").mkdir(parents=True, exist_ok=True)
        shutil.copy(blank, work / "mlruns" / "mlflow.db")
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
