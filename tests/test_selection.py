"""Which trial is "best": best_trials, the objective values a trial reports, and the
finished-trial count, on real in-memory Optuna studies with hand-written trial values.

Fast unit tests of what the end-to-end study tests (tests/test_study.py) only reach
through a whole study run; written to kill the mutants of scripts/mutation.sh.
"""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from research.config import StudyConfig
from research.sweep import _objective_values, best_trials, count_finished

DIST = {"temperature": FloatDistribution(1.0, 20.0)}


def study_with(directions, trials):
    """An in-memory study holding ``trials``: (state, values) pairs, numbered in order."""
    study = optuna.create_study(directions=directions)
    for i, (state, values) in enumerate(trials):
        kwargs = {"values": values} if state == TrialState.COMPLETE else {}
        if state == TrialState.PRUNED:
            kwargs["intermediate_values"] = {0: 0.99}  # a pruned trial may have looked great early on
        study.add_trial(create_trial(state=state, params={"temperature": 1.0 + i}, distributions=DIST, **kwargs))
    return study


def numbers(trials):
    return [t.number for t in trials]


C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def test_best_trial_maximizes():
    study = study_with(["maximize"], [(C, [0.5]), (P, None), (C, [0.9]), (F, None), (C, [0.7]), (C, [0.1])])
    assert numbers(best_trials(study)) == [2]
    assert numbers(best_trials(study, 3)) == [2, 4, 0]  # descending values
    assert best_trials(study)[0].values == [0.9]


def test_best_trial_minimizes():
    study = study_with(["minimize"], [(C, [0.5]), (C, [0.9]), (P, None), (C, [0.2]), (C, [0.7])])
    assert numbers(best_trials(study)) == [3]
    assert numbers(best_trials(study, 2)) == [3, 0]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_ties_go_to_the_earliest_trial(direction):
    study = study_with([direction], [(C, [0.3]), (C, [0.8]), (C, [0.8]), (C, [0.3])])
    want = [1, 2, 0, 3] if direction == "maximize" else [0, 3, 1, 2]
    assert numbers(best_trials(study, 4)) == want


def test_only_complete_trials_count_and_k_caps_the_list():
    study = study_with(["maximize"], [(P, None), (F, None), (C, [0.4]), (P, None)])
    assert numbers(best_trials(study, 10)) == [2]
    assert best_trials(study_with(["maximize"], [(P, None), (F, None)]), 3) == []
    assert best_trials(study_with(["maximize"], []), 1) == []


def test_default_k_is_one():
    study = study_with(["maximize"], [(C, [0.1]), (C, [0.2]), (C, [0.3])])
    assert numbers(best_trials(study)) == [2]


@pytest.mark.parametrize(
    "directions, want",
    [
        # front {1, 2} (trial 0 is dominated by 2), ranked by the first objective, maximized; then 0
        (["maximize", "minimize"], [1, 2, 0]),
        # front {0, 1} (trial 2 is dominated by 0), ranked by the first objective, minimized; then 2
        (["minimize", "maximize"], [0, 1, 2]),
    ],
)
def test_multi_objective_ranks_the_pareto_front_first_then_by_the_first_objective(directions, want):
    # second values chosen so that ranking by them (or by their sum) gives another order
    study = study_with(directions, [(C, [0.2, 100.0]), (C, [0.9, 5000.0]), (C, [0.5, 1.0])])
    assert numbers(best_trials(study, 3)) == want


def test_count_finished_counts_complete_pruned_and_failed_only():
    study = study_with(["maximize"], [(C, [0.4]), (P, None), (F, None), (C, [0.1])])
    study.add_trial(create_trial(state=TrialState.WAITING, params={}, distributions={}))
    assert count_finished(study) == 4
    study.enqueue_trial({"temperature": 3.0})  # WAITING: not finished
    assert count_finished(study) == 4


def study_config(objectives, **extra):
    return StudyConfig.model_validate({
        "name": "sel", "data": {"dataset": "mnist1d"}, "teachers": [{"model": {"name": "mnist1d_cnn"}}],
        "student": {"name": "mnist1d_mlp"}, "objectives": objectives, **extra})


def test_single_objective_value_is_a_plain_float_of_that_metric():
    cfg = study_config([{"metric": "val_nll", "direction": "minimize"}])
    got = _objective_values(cfg, {"val_accuracy": 0.75, "val_nll": 0.5, "params": 1234})
    assert got == 0.5 and isinstance(got, float)


def test_several_objectives_are_a_tuple_in_config_order():
    cfg = study_config([{"metric": "params", "direction": "minimize"}, {"metric": "val_accuracy"}], pruner={"name": "none"})
    got = _objective_values(cfg, {"val_accuracy": 0.75, "val_nll": 0.5, "params": 1234})
    assert got == (1234.0, 0.75)
    assert all(isinstance(v, float) for v in got)


def test_missing_objective_metric_raises():
    cfg = study_config([{"metric": "val_ece", "direction": "minimize"}])
    with pytest.raises(KeyError):
        _objective_values(cfg, {"val_accuracy": 0.75})
