"""The sampler seed rule (research.sweep.sampler_seed, documented in sweep's
docstring): each worker and each resume draws its own points, a seeded study
draws the same points run by run, and the grid sampler's shuffle is shared."""

import optuna
import pytest

from research import sweep
from research.config import StudyConfig, parse

from .study_support import PLAIN


def config(sampler: str, seed=0) -> StudyConfig:
    import yaml

    raw = yaml.safe_load(PLAIN.format(name="s", cache="unused", sampler=sampler, n_trials=4))
    raw["sampler"]["seed"] = seed
    if sampler == "grid":
        raw["sampler"]["grid"] = {"temperature": [1.0, 2.0, 4.0, 8.0], "alpha": [0.0, 0.5, 1.0]}
    return parse(StudyConfig, raw, source="test")


def test_seed_rule():
    assert sweep.sampler_seed(7) == 7  # a fresh single-process study draws as it always did
    assert sweep.sampler_seed(7, worker=0, started=0) == 7
    assert sweep.sampler_seed(None, worker=3, started=10) is None  # unseeded stays unseeded
    pairs = [(w, n) for w in range(8) for n in range(60)]
    seeds = [sweep.sampler_seed(7, worker=w, started=n) for w, n in pairs]
    assert len(set(seeds)) == len(pairs)  # no two workers or resumes share a seed
    assert all(0 <= s < 2**32 for s in seeds)
    assert seeds == [sweep.sampler_seed(7, worker=w, started=n) for w, n in pairs]  # and the same inputs, the same seeds
    assert sweep.sampler_seed(8, worker=1, started=0) != sweep.sampler_seed(7, worker=1, started=0)
    with pytest.raises(ValueError):
        sweep.sampler_seed(7, worker=-1)
    with pytest.raises(ValueError):
        sweep.sampler_seed(7, started=-2)


def first_points(sampler: optuna.samplers.BaseSampler, n: int = 3) -> list[tuple[float, float]]:
    """The first n points the sampler proposes on an empty in-memory study."""
    study = optuna.create_study(sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append((trial.suggest_float("temperature", 1.0, 20.0, log=True), trial.suggest_float("alpha", 0.0, 1.0)))
        study.tell(trial, 0.5)
    return points


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2"])
def test_workers_and_resumes_draw_apart_and_reproducibly(name):
    cfg = config(name)
    runs = {(w, n): first_points(sweep.make_sampler(cfg, worker=w, started=n)) for w, n in [(0, 0), (1, 0), (0, 5), (1, 5)]}
    points = [p for pts in runs.values() for p in pts]
    assert len(set(points)) == len(points)
    assert first_points(sweep.make_sampler(cfg, worker=1, started=5)) == runs[(1, 5)]
    assert first_points(sweep.make_sampler(cfg)) == runs[(0, 0)]
    # the seed of a single fresh process is the study's own seed
    own = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "nsga2": optuna.samplers.NSGAIISampler}[name]
    assert first_points(own(seed=0)) == runs[(0, 0)]


def test_unseeded_samplers_differ_between_processes():
    cfg = config("random", seed=None)
    assert first_points(sweep.make_sampler(cfg)) != first_points(sweep.make_sampler(cfg))


def test_grid_processes_share_one_shuffle():
    """GridSampler gives trial n the n-th point of its seeded shuffle: every process must shuffle
    alike, or a worker (or a resume) would give trial n another process's point."""
    cfg = config("grid")

    def grid_points(sampler):
        points = []

        def objective(trial):  # through optimize: the grid sampler stops the study once exhausted
            points.append((trial.suggest_float("temperature", 1.0, 20.0, log=True), trial.suggest_float("alpha", 0.0, 1.0)))
            return 0.5

        optuna.create_study(sampler=sampler).optimize(objective, n_trials=12)
        return points

    orders = [grid_points(sweep.make_sampler(cfg, worker=w, started=n)) for w, n in [(0, 0), (1, 0), (0, 5)]]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == sorted((t, a) for t in (1.0, 2.0, 4.0, 8.0) for a in (0.0, 0.5, 1.0))
