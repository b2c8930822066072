"""A study whose trials are trained K at a time in one stacked pass (``--population K``): each trial
keeps its own result, MLflow run, status and pruning, and equals the same trial run alone."""

import contextlib
import io
import logging

import pytest
import yaml
from optuna.trial import TrialState

from research.cli import main
from research.config import StudyConfig, config_hash, parse

from .study_support import (  # noqa: F401
    PLAIN,
    TINY_STUDY,
    blank_db,
    chdir_to,
    client_for,
    keep_torch_threads,
    load,
    study_cache,
    trial_runs,
    write_study,
)

# Rounds of 2: [good, diverging] then [learns nothing, drawn]. The median pruner needs a finished
# trial to compare with, so the pruned point comes in the second round, after trial 0 completed.
ROUNDS = TINY_STUDY + """  params:
    train.lr: {{choices: [0.01, 1.0e-7, 1.0e+30]}}
enqueue:
  - {{temperature: 4.0, alpha: 0.1, train.lr: 0.01}}
  - {{temperature: 4.0, alpha: 0.1, train.lr: 1.0e+30}}
  - {{temperature: 2.0, alpha: 0.5, train.lr: 1.0e-7}}
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 1, n_warmup_steps: 0}}
n_trials: 4
keep_models: 1
"""


def run_study(work, mp, blank, cache, name, *extra, template=ROUNDS, **fields):
    work.mkdir()
    chdir_to(mp, work, blank)
    path = write_study(work, name, cache, template, **fields)
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["study", "run", str(path), "--no-progress", *extra])


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, study_cache, blank_db):
    """The same study file run one trial at a time and in rounds of 2."""
    root = tmp_path_factory.mktemp("population")
    mp = pytest.MonkeyPatch()
    codes = {}
    for label, extra in (("lone", ()), ("pop", ("--population", "2"))):
        codes[label] = run_study(root / label, mp, blank_db, study_cache, "rounds", *extra)
    mp.undo()
    yield root, codes


def test_each_trial_has_its_own_result_state_and_run(two_studies):
    root, codes = two_studies
    assert codes["pop"] == 0
    study = load(root / "pop", "rounds")
    states = [t.state for t in study.get_trials()]
    assert states[:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED] and len(states) == 4
    assert states[3] in (TrialState.COMPLETE, TrialState.PRUNED)
    client = client_for(root / "pop")
    runs = {r.info.run_id: r for r in trial_runs(client, "rounds")}
    assert sorted(t.user_attrs["mlflow_run_id"] for t in study.get_trials()) == sorted(runs)
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for t in study.get_trials():
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == expected[t.state.name]
        assert run.data.tags["population"] == "2" and run.data.tags["trial_number"] == str(t.number)
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
    assert "NonFiniteLossError" in runs[study.trials[1].user_attrs["mlflow_run_id"]].data.tags["error"]
    pruned = study.trials[2].user_attrs["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(pruned, "val_accuracy")] == [1]  # pruned at its epoch 1
    good = study.trials[0].user_attrs["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(good, "train_loss")] == [1, 2]
    assert "weights.pt" in {a.path for a in client.list_artifacts(good)}


def test_a_member_equals_the_same_trial_run_alone(two_studies):
    root, codes = two_studies
    assert codes["lone"] == 0
    lone, pop = load(root / "lone", "rounds"), load(root / "pop", "rounds")
    assert [t.state for t in lone.get_trials()][:3] == [t.state for t in pop.get_trials()][:3]
    assert pop.trials[0].value == pytest.approx(lone.trials[0].value, abs=1e-9)  # the same accuracy
    cl, cp = client_for(root / "lone"), client_for(root / "pop")
    ml = cl.get_run(lone.trials[0].user_attrs["mlflow_run_id"]).data.metrics
    mp = cp.get_run(pop.trials[0].user_attrs["mlflow_run_id"]).data.metrics
    for key in ("val_nll", "test_accuracy", "test_nll", "train_loss", "train_soft"):
        assert mp[key] == pytest.approx(ml[key], rel=1e-4), key


def test_a_student_that_does_not_stack_runs_one_at_a_time(tmp_path, monkeypatch, study_cache, blank_db, caplog):
    template = PLAIN.replace("student: {{name: mnist1d_mlp}}", "student: {{name: mnist1d_mlp, args: {{dropout: 0.1}}}}")
    with caplog.at_level(logging.WARNING, logger="research.sweep.population"):
        code = run_study(tmp_path / "w", monkeypatch, blank_db, study_cache, "drop", "--population", "2",
                         template=template, sampler="random", n_trials=2)
    assert code == 0
    assert any("one at a time" in r.getMessage() and "dropout" in r.getMessage() for r in caplog.records)
    assert [t.state for t in load(tmp_path / "w", "drop").get_trials()] == [TrialState.COMPLETE] * 2


def test_population_is_how_a_study_runs_not_what_it_is():
    raw = yaml.safe_load(ROUNDS.format(name="h", cache="/tmp/x"))
    plain = parse(StudyConfig, raw, source="t")
    four = parse(StudyConfig, {**raw, "population": 4}, source="t")
    assert four.population == 4 and plain.population == 1
    assert config_hash(four) == config_hash(plain)  # joins and resumes alike; old studies keep their hash
    with pytest.raises(Exception, match="population"):
        parse(StudyConfig, {**raw, "population": 0}, source="t")


def test_resume_with_a_population(tmp_path, monkeypatch, study_cache, blank_db):
    assert run_study(tmp_path / "w", monkeypatch, blank_db, study_cache, "again", "--population", "2",
                     template=PLAIN, sampler="tpe", n_trials=2) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["study", "resume", "again", "--n-trials", "3", "--population", "2", "--no-progress"]) == 0
    trials = load(tmp_path / "w", "again").get_trials()
    # Rounds of 2, 2 and the 1 left (a round of one runs alone, through the lone objective).
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [t.user_attrs.get("population") for t in trials] == [2, 2, 2, 2, None]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5
