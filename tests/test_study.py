"""Tiny real studies end to end: Optuna trials <-> MLflow child runs, statuses,
resume, pruning, failures, bad input, and two workers sharing PostgreSQL."""

import os
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient

from research.cli import main

STUDY = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn}}
    train: {{epochs: 3}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 3}}
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


def write_study(dirpath, name, cache):
    path = dirpath / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, cache=cache))
    return path


def client_for(work):
    return MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")


def journal(work):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))


def trial_runs(client, study_name):
    exp = client.get_experiment_by_name(study_name)
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_study(work, "tiny", work / ".cache")
    code = main(["study", "run", str(path), "--no-progress"])
    yield work, code
    mp.undo()


def test_trials_and_child_runs_correspond_one_to_one(tiny_study):
    work, code = tiny_study
    assert code == 0
    study = optuna.load_study(study_name="tiny", storage=journal(work))
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


def test_mlflow_status_follows_optuna_state(tiny_study):
    work, _ = tiny_study
    study = optuna.load_study(study_name="tiny", storage=journal(work))
    client = client_for(work)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1] == optuna.trial.TrialState.PRUNED
    assert states[2] == optuna.trial.TrialState.FAIL  # and the study went on to trial 3
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for t in study.get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == expected[t.state.name], (t.number, t.state, run.info.status)
    failed = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
    assert "NonFiniteLossError" in failed.data.tags["error"]
    pruned = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [1]


def test_completed_trials_keep_their_student_and_parent_has_best_and_plots(tiny_study):
    work, _ = tiny_study
    study = optuna.load_study(study_name="tiny", storage=journal(work))
    client = client_for(work)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number))
    for t in complete:
        names = {a.path for a in client.list_artifacts(t.user_attrs["mlflow_run_id"])}
        assert "weights.pt" in names
        assert ("model" in names) == (t.number == best.number)  # keep_models: 1
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["best_trial"] == best.number
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best.value)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots


def test_resume_continues_numbering_without_redoing_finished_trials(tiny_study, monkeypatch):
    work, _ = tiny_study
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = client_for(work)
    before = {r.info.run_id for r in trial_runs(client, "tiny")}
    assert main(["study", "resume", "tiny", "--no-progress"]) == 0  # already has its 4: nothing to do
    assert {r.info.run_id for r in trial_runs(client, "tiny")} == before
    assert main(["study", "resume", "tiny", "--n-trials", "2", "--no-progress"]) == 0
    study = optuna.load_study(study_name="tiny", storage=journal(work))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4, 5]
    after = {r.info.run_id: r for r in trial_runs(client, "tiny")}
    assert before < set(after) and len(after) == 6
    assert {after[i].data.tags["trial_number"] for i in set(after) - before} == {"4", "5"}
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


def test_report_and_finalize(tiny_study, monkeypatch, capsys):
    work, _ = tiny_study
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["study", "finalize", "tiny", "--seeds", "2", "--no-progress"]) == 0
    assert main(["study", "report", "tiny", "--out", str(work / "rep")]) == 0
    md = (work / "rep" / "report.md").read_text()
    assert "Best trial against the enqueued defaults" in md and "Finalized on the whole training split" in md
    assert (work / "rep" / "optimization_history.png").stat().st_size > 1000
    study = optuna.load_study(study_name="tiny", storage=journal(work))
    client = client_for(work)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["final_best_seeds"] == 2
    assert 0 < parent.data.metrics["final_best_test_accuracy_mean"] <= 1
    finals = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")
    assert len(finals) == 2 and all(r.data.params["full_train"] == "True" for r in finals)
    assert main(["study", "list"]) == 0
    assert "tiny" in capsys.readouterr().out


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
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra, expected = STUDY_BAD[case]
    (tmp_path / "s.yaml").write_text(BASE + extra)
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no journal, no mlruns, no cache


def test_same_name_with_another_config_is_refused(tiny_study, monkeypatch, capsys):
    work, _ = tiny_study
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_study(work, "tiny", work / ".cache")
    assert main(["study", "run", str(path), "--set", "train.epochs=4", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="tiny", storage=journal(work)).trials) == 6  # untouched


def test_unknown_study_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "resume", "nope"]) == 2
    assert "no study storage" in capsys.readouterr().err


POSTGRES_URL = os.environ.get("RESEARCH_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES_URL and not os.environ.get("CI"), reason="set RESEARCH_TEST_POSTGRES_URL (.ci/postgres.sh starts a server)")
def test_two_workers_share_one_postgresql_study(tmp_path, monkeypatch):
    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = f"pg_{uuid.uuid4().hex[:8]}"
    text = STUDY.format(name=name, cache=tmp_path / ".cache")
    text = text.replace("train.lr: {choices: [0.01, 1.0e-7, 1.0e+30]}", "train.lr: {choices: [0.01, 0.003]}")
    text = text.split("enqueue:")[0] + "enqueue: []\nsampler: {name: tpe, seed: 0}\npruner: {name: none}\nn_trials: 5\n"
    (tmp_path / "pg.yaml").write_text(text)
    assert main(["study", "run", "pg.yaml", "--workers", "2", "--storage", POSTGRES_URL, "--no-progress"]) == 0
    study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
    trials = study.get_trials()
    assert len([t for t in trials if t.state.is_finished()]) == 5 and len(trials) == 5
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    runs = trial_runs(client_for(tmp_path), name)
    assert len(runs) == 5
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [0, 1, 2, 3, 4]
    optuna.delete_study(study_name=name, storage=POSTGRES_URL)
