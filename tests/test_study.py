"""Tiny real studies end to end: Optuna trials <-> MLflow child runs, statuses,
resume, pruning, failures, interrupts, bad input, and two workers sharing one
journal file or one PostgreSQL database.

Module fixtures build their studies once and tests only read them; a test that
changes a study builds its own."""

import contextlib
import io
import os
import re
import statistics
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from research.cli import main

from .study_support import (
    PLAIN, STUDY, all_runs, assert_no_repeated_point, blank_db, chdir_to, keep_torch_threads, client_for, journal, load, sampled_params, study_cache,  # noqa: F401
    trial_runs, write_study,
)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, study_cache, blank_db):
    """The tiny study run, then finalized (2 seeds) and reported; tests only read it."""
    work = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    chdir_to(mp, work, blank_db)
    path = write_study(work, "tiny", study_cache)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", "run", str(path), "--no-progress"])
        finalize_code = main(["study", "finalize", "tiny", "--seeds", "2", "--no-progress"])
        report_code = main(["study", "report", "tiny", "--out", str(work / "rep")])
    yield work, code, {"finalize": finalize_code, "report": report_code, "stdout": out.getvalue()}
    mp.undo()


def test_trials_and_child_runs_correspond_one_to_one(tiny_study):
    work, code, _ = tiny_study
    assert code == 0
    study = load(work, "tiny")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    client = client_for(work)
    runs = {r.info.run_id: r for r in trial_runs(client, "tiny")}
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert sorted(t.user_attrs["mlflow_run_id"] for t in trials) == sorted(runs)
    for t in trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["trial_number"] == str(t.number) and run.data.tags["study"] == "tiny"
        assert float(run.data.params["distill.temperature"]) == pytest.approx(t.params["temperature"])
        assert run.data.params["train.epochs"] == "3"  # fixed parameters are logged too
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["role"] == "study"
    assert not [r.info.run_id for r in all_runs(client, "tiny") if r.info.status == "RUNNING"]


def test_mlflow_status_follows_optuna_state(tiny_study):
    work, _, _ = tiny_study
    study = load(work, "tiny")
    client = client_for(work)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[0] == TrialState.COMPLETE
    assert states[1] == TrialState.PRUNED
    assert states[2] == TrialState.FAIL  # and the study went on to trial 3
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for t in study.get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == expected[t.state.name], (t.number, t.state, run.info.status)
    failed = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
    assert "NonFiniteLossError" in failed.data.tags["error"]
    pruned = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [1]


def _best_by_value(study, direction="maximize"):
    """The best complete trial read straight from storage: max (or min) value, lowest number on a tie."""
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    pick = max if direction == "maximize" else min
    value = pick(t.value for t in complete)
    return min((t for t in complete if t.value == value), key=lambda t: t.number)


def test_completed_trials_keep_their_student_and_parent_has_best_and_plots(tiny_study):
    work, _, _ = tiny_study
    study = load(work, "tiny")
    client = client_for(work)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = _best_by_value(study)  # several complete trials: see test_study_selection.py
    for t in complete:
        names = {a.path for a in client.list_artifacts(t.user_attrs["mlflow_run_id"])}
        assert "weights.pt" in names
        assert ("model" in names) == (t.number == best.number)  # keep_models: 1
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["best_trial"] == best.number
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best.value)
    # The trial's own run says the same (MLflow's record, not Optuna's).
    assert client.get_run(best.user_attrs["mlflow_run_id"]).data.metrics["val_accuracy"] == pytest.approx(best.value)
    assert parent.data.metrics["trials_complete"] == len(complete)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots
    assert "plots/contour_temperature_alpha.png" not in plots  # alpha is not searched here


def test_summary_names_the_best_trial(tiny_study):
    work, _, extra = tiny_study
    best = _best_by_value(load(work, "tiny"))
    assert re.search(r"best\s+trial\s+(\d+):", extra["stdout"]).group(1) == str(best.number)


def test_report_and_finalize(tiny_study, monkeypatch, capsys):
    work, _, extra = tiny_study
    assert extra["finalize"] == 0 and extra["report"] == 0
    md = (work / "rep" / "report.md").read_text()
    assert "Best trial against the enqueued defaults" in md and "Finalized on the whole training split" in md
    assert (work / "rep" / "optimization_history.png").stat().st_size > 1000
    study = load(work, "tiny")
    best = _best_by_value(study)
    client = client_for(work)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["final_best_seeds"] == 2
    assert parent.data.metrics["final_best_trial"] == best.number
    finals = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")
    assert len(finals) == 2 and all(r.data.params["full_train"] == "True" for r in finals)
    # finalize retrained the best trial's configuration, with seeds 0 and 1
    assert {r.data.tags["from_trial"] for r in finals} == {str(best.number)}
    assert all(float(r.data.params["distill.temperature"]) == pytest.approx(best.params["temperature"]) for r in finals)
    assert sorted(r.data.params["seed"] for r in finals) == ["0", "1"]
    # mean and spread from the final runs' own test accuracies
    accs = [r.data.metrics["test_accuracy"] for r in finals]
    assert parent.data.metrics["final_best_test_accuracy_mean"] == pytest.approx(statistics.fmean(accs))
    assert parent.data.metrics["final_best_test_accuracy_std"] == pytest.approx(statistics.stdev(accs))
    # the enqueued default (trial 0) is finalized too unless it is the best
    defaults = client.search_runs([parent.info.experiment_id], "tags.role = 'final_default'")
    assert len(defaults) == (0 if best.number == 0 else 2)
    monkeypatch.chdir(work)
    assert main(["study", "list"]) == 0
    assert "tiny" in capsys.readouterr().out


# ---------------------------------------------------------------- resume and workers


def test_resume_continues_numbering_and_draws_new_points(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "res", study_cache, PLAIN, sampler="random", n_trials=2)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    client = client_for(tmp_path)
    before = {r.info.run_id for r in trial_runs(client, "res")}
    assert len(before) == 2
    assert main(["study", "resume", "res", "--no-progress"]) == 0  # already has its 2: nothing to do
    assert {r.info.run_id for r in trial_runs(client, "res")} == before
    assert main(["study", "resume", "res", "--n-trials", "2", "--no-progress"]) == 0
    study = load(tmp_path, "res")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert_no_repeated_point(study)  # a resume that reseeds as the first run did replays trials 0 and 1
    after = {r.info.run_id: r for r in trial_runs(client, "res")}
    assert before < set(after) and len(after) == 4
    assert {after[i].data.tags["trial_number"] for i in set(after) - before} == {"2", "3"}
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


def test_a_seeded_study_replays_itself_run_by_run(tmp_path, monkeypatch, study_cache, blank_db):
    """Same commands on a fresh storage, same draws: the seed rule is deterministic."""
    draws = []
    for i in range(2):
        work = tmp_path / str(i)
        work.mkdir()
        chdir_to(monkeypatch, work, blank_db)
        path = write_study(work, "again", study_cache, PLAIN, sampler="random", n_trials=1)
        assert main(["study", "run", str(path), "--no-progress"]) == 0
        assert main(["study", "resume", "again", "--n-trials", "1", "--no-progress"]) == 0
        draws.append(sampled_params(load(work, "again")))
    assert draws[0] == draws[1] and len(set(draws[0])) == 2


POSTGRES_URL = os.environ.get("RESEARCH_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.parametrize("backend", ["journal", pytest.param("postgresql", marks=pytest.mark.skipif(
    not POSTGRES_URL and not IN_CI, reason="set RESEARCH_TEST_POSTGRES_URL (.ci/postgres.sh starts a server)"))])
def test_two_workers_share_one_study(backend, tmp_path, monkeypatch, study_cache, blank_db):
    """`--workers 2`: exactly the asked trials, all COMPLETE, each with its child run, no point twice."""
    if backend == "postgresql":
        assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"w2_{backend}_{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared with other runs
    path = write_study(tmp_path, name, study_cache, PLAIN, sampler="tpe", n_trials=4)
    storage = ["--storage", POSTGRES_URL] if backend == "postgresql" else []
    try:
        assert main(["study", "run", str(path), "--workers", "2", *storage, "--no-progress"]) == 0
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL) if storage else load(tmp_path, name)
        trials = study.get_trials()
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.state for t in trials]
        # Both workers start from the same seeded TPE: without per-worker seeds their first draws coincide.
        assert_no_repeated_point(study)
        client = client_for(tmp_path)
        runs = trial_runs(client, name)
        assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
        assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [0, 1, 2, 3]
        assert all(r.info.status == "FINISHED" for r in runs)
        parent_id = study.user_attrs["mlflow_parent_run_id"]
        assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in runs)
        assert client.get_run(parent_id).info.status == "FINISHED"
    finally:
        if storage:
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=name, storage=POSTGRES_URL)


# ---------------------------------------------------------------- interrupts


def test_ctrl_c_during_a_trial_kills_the_parent_and_leaves_no_run_running(tmp_path, monkeypatch, study_cache, blank_db, capsys):
    from research import sweep

    chdir_to(monkeypatch, tmp_path, blank_db)
    text = PLAIN.format(name="intr", cache=study_cache, sampler="random", n_trials=3).replace("pruner: {name: none}", "pruner: {name: median}")
    assert "median" in text
    (tmp_path / "intr.yaml").write_text(text)
    real = sweep._pruning_callback
    calls = []

    def interrupting(trial):
        report = real(trial)

        def callback(epoch, metrics):
            report(epoch, metrics)
            if trial.number == 1:  # Ctrl-C in the middle of the second trial
                calls.append(trial.number)
                raise KeyboardInterrupt

        return callback

    monkeypatch.setattr(sweep, "_pruning_callback", interrupting)
    assert main(["study", "run", "intr.yaml", "--no-progress"]) == 130
    assert calls == [1]
    assert "interrupted" in capsys.readouterr().err
    study = load(tmp_path, "intr")
    client = client_for(tmp_path)
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    runs = all_runs(client, "intr")
    assert not [(r.data.tags.get("role"), r.info.status) for r in runs if r.info.status == "RUNNING"]
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1]  # trial 2 never started
    assert trials[0].state == TrialState.COMPLETE
    assert trials[1].state != TrialState.RUNNING
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert client.get_run(trials[1].user_attrs["mlflow_run_id"]).info.status == "KILLED"


# ---------------------------------------------------------------- bad input


STUDY_BAD = {
    "unknown key": ("n_trails: 3\n", "n_trails: unknown key"),
    "test objective": ("objectives: [{metric: test_accuracy}]\n", "the test set never steers the search"),
    "weights with one teacher": ("search: {teacher_weights: true}\n", "needs at least 2 teachers"),
    "grid without values": ("sampler: {name: grid}\n", "grid sampler needs grid"),
    "enqueue out of range": ("enqueue: [{temperature: 50.0}]\n", "enqueue.0.temperature"),
    "enqueue unknown": ("enqueue: [{beta: 1.0}]\n", "enqueue.0: beta not searched"),
    "bad storage": ("storage: postgresql://nobody:x@127.0.0.1:1/none\n", "cannot be opened"),
    "zero trials": ("n_trials: 0\n", "n_trials"),
}

BASE = """
name: bad
data: {dataset: mnist1d}
teachers: [{model: {name: mnist1d_cnn}}]
student: {name: mnist1d_mlp}
"""


@pytest.mark.parametrize("case", sorted(STUDY_BAD))
def test_bad_study_file_exits_2_creates_no_study_and_no_experiment(case, tmp_path, monkeypatch, capsys):
    chdir_to(monkeypatch, tmp_path)
    extra, expected = STUDY_BAD[case]
    (tmp_path / "s.yaml").write_text(BASE + extra)
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no journal, no mlruns, no cache


@pytest.fixture
def empty_study(tmp_path, monkeypatch, study_cache, blank_db):
    """A study created (parent run, config) with no trial yet: no training, so cheap."""
    from research import sweep
    from research.config import load_study_config
    from research.tracking import Tracker

    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "made", study_cache, PLAIN, sampler="random", n_trials=2)
    cfg = load_study_config(str(path), [])
    sweep.create_or_join(cfg, Tracker(cfg.tracking.uri), sweep.storage_url(None), config_path=str(path))
    return tmp_path, path


def snapshot(root):
    """Every file under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_name_with_another_config_is_refused(empty_study, capsys):
    work, path = empty_study
    before = snapshot(work)
    assert main(["study", "run", str(path), "--set", "train.epochs=4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err, err
    assert load(work, "made").get_trials() == []  # untouched
    assert snapshot(work) == before


BAD_FLAGS = {
    "resume unknown study": (["study", "resume", "nope"], "no study named 'nope'"),
    "resume zero trials": (["study", "resume", "made", "--n-trials", "0"], "--n-trials must be at least 1"),
    "resume negative trials": (["study", "resume", "made", "--n-trials", "-3"], "--n-trials must be at least 1, got -3"),
    "resume zero workers": (["study", "resume", "made", "--workers", "0"], "--workers must be at least 1"),
    "finalize unknown study": (["study", "finalize", "nope"], "no study named 'nope'"),
    "finalize zero seeds": (["study", "finalize", "made", "--seeds", "0"], "--seeds must be at least 1"),
    "finalize negative seeds": (["study", "finalize", "made", "--seeds", "-2"], "--seeds must be at least 1, got -2"),
    "finalize without a complete trial": (["study", "finalize", "made", "--seeds", "1"], "no completed trial to finalize"),
    "report unknown study": (["study", "report", "nope"], "no study named 'nope'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_resume_and_finalize_input_exits_2_in_one_line_and_writes_nothing(case, empty_study, capsys):
    work, _ = empty_study
    argv, expected = BAD_FLAGS[case]
    before = snapshot(work)
    capsys.readouterr()
    assert main([*argv, "--no-progress"] if argv[1] != "report" else argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert captured.out == ""
    assert snapshot(work) == before


@pytest.mark.parametrize("action", ["resume", "finalize", "report"])
def test_no_storage_at_all(action, tmp_path, monkeypatch, capsys):
    chdir_to(monkeypatch, tmp_path)
    assert main(["study", action, "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study storage" in err, err
    assert list(tmp_path.iterdir()) == []
