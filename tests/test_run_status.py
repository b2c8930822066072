"""A run's MLflow status follows what happened inside it, and a trial's state reaches its run:
Tracker.run / Tracker.end, the pruning callback (a pruned trial raises TrialPruned, which
the trial's run turns into KILLED) and the callback that tags a finished trial's run.

A real MLflow SQLite store in a temporary folder and real in-memory Optuna studies;
fast unit tests of what tests/test_study.py checks end to end (written to kill the
mutants of scripts/mutation.sh).
"""

import optuna
import pytest
from optuna.trial import TrialState

from research.sweep import _mark_failed_run, _pruning_callback
from research.tracking import RunKilled, Tracker, _one_line


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}")


def status(tracker, handle):
    return tracker.client.get_run(handle.run_id).info.status


def tags(tracker, handle):
    return tracker.client.get_run(handle.run_id).data.tags


def test_a_run_that_returns_is_finished(tracker):
    with tracker.run("status", "ok") as handle:
        assert status(tracker, handle) == "RUNNING"
    assert status(tracker, handle) == "FINISHED"
    assert "error" not in tags(tracker, handle) and "killed_reason" not in tags(tracker, handle)


@pytest.mark.parametrize("exc", [RunKilled("stopped early at epoch 3"), KeyboardInterrupt()])
def test_killed_and_interrupted_runs_are_killed_with_the_reason(tracker, exc):
    with pytest.raises(type(exc)):
        with tracker.run("status", "killed") as handle:
            raise exc
    assert status(tracker, handle) == "KILLED"
    want = "RunKilled: stopped early at epoch 3" if isinstance(exc, RunKilled) else "KeyboardInterrupt"
    assert tags(tracker, handle)["killed_reason"] == want


def test_a_pruned_trial_is_killed_only_when_its_type_is_given(tracker):
    with pytest.raises(optuna.TrialPruned):
        with tracker.run("status", "pruned", killed_on=(optuna.TrialPruned,)) as killed:
            raise optuna.TrialPruned("pruned at epoch 1")
    assert status(tracker, killed) == "KILLED"
    assert tags(tracker, killed)["killed_reason"] == "TrialPruned: pruned at epoch 1"
    with pytest.raises(optuna.TrialPruned):
        with tracker.run("status", "pruned-unexpected") as failed:
            raise optuna.TrialPruned("pruned at epoch 1")
    assert status(tracker, failed) == "FAILED"


def test_an_error_fails_the_run_with_its_message_type_and_traceback(tracker):
    with pytest.raises(ValueError):
        with tracker.run("status", "broken") as handle:
            raise ValueError("loss is nan\n  at epoch 2")
    assert status(tracker, handle) == "FAILED"
    t = tags(tracker, handle)
    assert t["error"] == "ValueError: loss is nan at epoch 2" and t["error_type"] == "ValueError"
    assert "error.txt" in {a.path for a in tracker.client.list_artifacts(handle.run_id)}


def test_end_sets_the_given_status_and_finished_by_default(tracker):
    a, b = tracker.start("status", "a"), tracker.start("status", "b")
    tracker.end(a)
    tracker.end(b, "KILLED")
    assert (status(tracker, a), status(tracker, b)) == ("FINISHED", "KILLED")


def test_one_line_names_the_type_and_joins_whitespace():
    assert _one_line(ValueError("a\n  b\tc ")) == "ValueError: a b c"
    assert _one_line(RunKilled()) == "RunKilled"
    long = _one_line(RuntimeError("x" * 600))
    assert long == ("RuntimeError: " + "x" * 600)[:500] and len(long) == 500


# ---------------------------------------------------------------- Optuna side


def pruning_study():
    """Median rule after one trial: the first trial reported 0.9 at epoch 1."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    first = study.ask()
    first.report(0.9, step=1)
    study.tell(first, 0.9)
    return study


def test_a_trial_below_the_median_is_pruned_at_that_epoch():
    study = pruning_study()
    trial = study.ask()
    report = _pruning_callback(trial)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at epoch 1 \(val_accuracy 0.1235\)"):
        report(1, {"val_accuracy": 0.12345, "val_nll": 2.0})
    assert study.trials[trial.number].intermediate_values == {1: 0.12345}


def test_a_good_trial_is_reported_and_not_pruned():
    study = pruning_study()
    trial = study.ask()
    report = _pruning_callback(trial)
    report(1, {"val_accuracy": 0.95})
    report(2, {"val_accuracy": 0.97})
    assert study.trials[trial.number].intermediate_values == {1: 0.95, 2: 0.97}


def test_epochs_without_a_validation_accuracy_are_not_reported():
    study = pruning_study()
    trial = study.ask()
    _pruning_callback(trial)(1, {"train_loss": 0.01, "val_nll": 9.0})  # would be pruned if reported as anything
    assert study.trials[trial.number].intermediate_values == {}


def test_a_finished_trials_state_is_tagged_on_its_run(tracker):
    study = optuna.create_study()
    handle = tracker.start("status", "trial-000")
    trial = study.ask()
    trial.set_user_attr("mlflow_run_id", handle.run_id)
    study.tell(trial, state=TrialState.FAIL)
    _mark_failed_run(tracker)(study, study.trials[0])
    assert tags(tracker, handle)["optuna_state"] == "FAIL"


def test_a_trial_without_a_run_is_left_alone(tracker):
    study = optuna.create_study()
    study.tell(study.ask(), state=TrialState.FAIL)
    _mark_failed_run(tracker)(study, study.trials[0])  # no mlflow_run_id: nothing to tag, no error
