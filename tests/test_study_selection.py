"""The best trial is the best: what a study reports (summary, parent-run tags and
metrics, report) and what `finalize` retrains, checked against values read
straight from Optuna's storage, for maximize, minimize and two objectives (the
Pareto front computed here, not by Optuna); the study plots where they apply;
the grid sampler, the hyperband pruner and --timeout end to end."""

import contextlib
import io
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from research import sweep
from research.cli import main

from .study_support import (  # noqa: F401
    PLAIN, all_runs, assert_no_repeated_point, blank_db, chdir_to, keep_torch_threads, client_for, load, pareto_front, study_cache, trial_runs, write_study,
)

# ---------------------------------------------------------------- selection on hand-made trials

DIST = {"temperature": FloatDistribution(1.0, 20.0, log=True), "alpha": FloatDistribution(0.0, 1.0)}


def hand_made(study: optuna.Study, rows) -> optuna.Study:
    """Add trials with given states and values (no training); trial i has temperature 1 + i."""
    for i, (state, values) in enumerate(rows):
        study.add_trial(create_trial(state=state, values=values, params={"temperature": 1.0 + i, "alpha": 0.5}, distributions=DIST,
                                     intermediate_values={1: 0.99} if state == TrialState.PRUNED else None))
    return study


C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def numbers(trials):
    return [t.number for t in trials]


def test_best_trials_maximize_ties_go_to_the_earlier_trial_and_unfinished_ones_never_count():
    study = hand_made(optuna.create_study(direction="maximize"), [(C, [0.5]), (P, None), (C, [0.9]), (F, None), (C, [0.9]), (C, [0.7])])
    assert numbers(sweep.best_trials(study, 1)) == [2]
    assert numbers(sweep.best_trials(study, 3)) == [2, 4, 5]
    assert numbers(sweep.best_trials(study, 10)) == [2, 4, 5, 0]  # the pruned trial (0.99 reported) is not a candidate


def test_best_trials_minimize():
    study = hand_made(optuna.create_study(direction="minimize"), [(C, [0.5]), (C, [0.2]), (C, [0.9]), (C, [0.2])])
    assert numbers(sweep.best_trials(study, 2)) == [1, 3]


def test_best_trials_multi_objective_takes_the_front_first_even_on_a_tie():
    # maximize accuracy, minimize size: trials 0 and 1 tie on accuracy, 1 is smaller, so 0 is dominated.
    study = hand_made(optuna.create_study(directions=["maximize", "minimize"]),
                      [(C, [0.9, 1000]), (C, [0.9, 500]), (C, [0.8, 100]), (C, [0.7, 2000]), (F, None)])
    assert numbers(sweep.best_trials(study, 1)) == [1]
    assert numbers(sweep.best_trials(study, 4)) == [1, 2, 0, 3]


def test_no_complete_trial_no_best():
    study = hand_made(optuna.create_study(directions=["maximize", "minimize"]), [(F, None), (P, None)])
    assert sweep.best_trials(study, 3) == []


# (templates are format strings: literal braces doubled)
MULTI = PLAIN.replace("enqueue: []", "enqueue: []\nobjectives: [{{metric: val_accuracy}}, {{metric: params, direction: minimize}}]")


def test_a_tied_multi_objective_study_reports_and_finalizes_the_front_member(tmp_path, monkeypatch, study_cache, blank_db):
    """Trials with a tie on the first objective, added by hand to a real study: the
    summary of finish_study, the parent's tags, the report and finalize all pick the
    non-dominated one (trial 1), not the earlier dominated one (trial 0)."""
    from research.config import load_study_config
    from research.tracking import Tracker

    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "tie", study_cache, MULTI, sampler="random", n_trials=4)
    cfg = load_study_config(str(path), [])
    tracker = Tracker(cfg.tracking.uri)
    study = sweep.create_or_join(cfg, tracker, sweep.storage_url(None), config_path=str(path))
    hand_made(study, [(C, [0.9, 1000]), (C, [0.9, 500]), (C, [0.8, 100])])
    summary = sweep.finish_study(tracker, study, cfg)
    assert summary["best_trial"] == 1
    parent = client_for(tmp_path).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["best_trial"] == "1" and float(parent.data.tags["best.temperature"]) == 2.0
    assert parent.data.metrics["best_params"] == 500
    rows = sweep.trials_table(study)
    from research.cli import format_study_summary

    assert re.search(r"best\s+trial\s+1:", format_study_summary(cfg, rows, 1.0, best_trial=summary["best_trial"]))
    assert main(["study", "report", "tie", "--out", str(tmp_path / "rep")]) == 0
    best_row = next(line for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| best"))
    assert best_row.split("|")[2].strip() == "1", best_row
    assert main(["study", "finalize", "tie", "--seeds", "1", "--no-default", "--no-progress"]) == 0
    client = client_for(tmp_path)
    finals = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")
    assert [(r.data.tags["from_trial"], float(r.data.params["distill.temperature"])) for r in finals] == [("1", 2.0)]


# ---------------------------------------------------------------- real studies, both directions and two objectives

RANKED = {
    "max": PLAIN,
    "min": PLAIN.replace("enqueue: []", "enqueue: []\nobjectives: [{{metric: val_nll, direction: minimize}}]"),
    # student size searched, so the two objectives pull apart
    "multi": MULTI.replace("student: {{name: mnist1d_mlp}}", "student: {{name: mlp, args: {{widths: [32]}}}}")
                  .replace("  alpha: {{low: 0.0, high: 1.0}}", "  alpha: null\n  params:\n    student.args.widths: {{choices: [[8], [64]]}}"),
}
assert "objectives" in MULTI and "widths: [32]" in RANKED["multi"] and "student.args.widths" in RANKED["multi"]
DIRECTIONS = {"max": ["maximize"], "min": ["minimize"], "multi": ["maximize", "minimize"]}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, study_cache, blank_db):
    """Three real studies of 4 complete trials each, finalized (1 seed) and reported; tests only read them."""
    work = tmp_path_factory.mktemp("ranked")
    mp = pytest.MonkeyPatch()
    chdir_to(mp, work, blank_db)
    stdout = {}
    for name, template in RANKED.items():
        path = write_study(work, name, study_cache, template, sampler="random", n_trials=4)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["study", "run", str(path), "--no-progress"]) == 0
            assert main(["study", "finalize", name, "--seeds", "1", "--no-default", "--no-progress"]) == 0
            assert main(["study", "report", name, "--out", str(work / "rep" / name)]) == 0
        stdout[name] = out.getvalue()
    yield work, stdout
    mp.undo()


def expected_best(study: optuna.Study, directions: list[str]) -> tuple[set[int], optuna.trial.FrozenTrial]:
    """From storage: the acceptable best trials (the max, min or the Pareto front) and the
    documented pick among them (best first objective, then the lowest number)."""
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 3, "the test needs several complete trials"
    if len(directions) == 1:
        pick = max if directions[0] == "maximize" else min
        top = pick(t.value for t in complete)
        acceptable = {t.number for t in complete if t.value == top}
    else:
        acceptable = pareto_front({t.number: tuple(t.values) for t in complete}, directions)
    sign = 1 if directions[0] == "maximize" else -1
    chosen = min((t for t in complete if t.number in acceptable), key=lambda t: (-sign * t.values[0], t.number))
    return acceptable, chosen


@pytest.mark.parametrize("name", sorted(RANKED))
def test_reported_and_finalized_best_is_the_best(name, ranked):
    work, stdout = ranked
    study = load(work, name)
    acceptable, chosen = expected_best(study, DIRECTIONS[name])
    client = client_for(work)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert int(parent.data.tags["best_trial"]) in acceptable
    assert int(parent.data.tags["best_trial"]) == chosen.number
    assert parent.data.tags["best_run_id"] == chosen.user_attrs["mlflow_run_id"]
    metric = {"max": "val_accuracy", "min": "val_nll", "multi": "val_accuracy"}[name]
    assert parent.data.metrics[f"best_{metric}"] == pytest.approx(chosen.values[0])
    # the chosen trial's own MLflow run carries that value (MLflow's record, not Optuna's)
    assert client.get_run(chosen.user_attrs["mlflow_run_id"]).data.metrics[metric] == pytest.approx(chosen.values[0])
    assert re.search(r"best\s+trial\s+(\d+):", stdout[name]).group(1) == str(chosen.number)
    finals = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")
    assert [r.data.tags["from_trial"] for r in finals] == [str(chosen.number)]
    assert parent.data.metrics["final_best_trial"] == chosen.number
    for key, value in chosen.params.items():
        assert finals[0].data.params[f"trial.{key}"] == str(value)
    best_row = next(line for line in (work / "rep" / name / "report.md").read_text().splitlines() if line.startswith("| best"))
    assert best_row.split("|")[2].strip() == str(chosen.number)


def test_the_multi_objective_studies_objectives_really_differ(ranked):
    """Guard for the test above: the front has more than one point to choose from."""
    work, _ = ranked
    study = load(work, "multi")
    sizes = {t.params["student.args.widths"]: t.values[1] for t in study.get_trials() if t.state == TrialState.COMPLETE}
    # 40 inputs, 10 classes: 40*8+8 + 8*10+10 = 418 and 40*64+64 + 64*10+10 = 3274 parameters
    assert sizes == {"[8]": 418, "[64]": 3274}


def test_importance_contour_and_pareto_plots_where_they_apply(ranked):
    work, _ = ranked
    client = client_for(work)
    expect = {"max": {"param_importances", "contour_temperature_alpha"},
              "min": {"param_importances", "contour_temperature_alpha"},
              "multi": {"param_importances", "pareto_front"}}
    for name, wanted in expect.items():
        parent_id = load(work, name).user_attrs["mlflow_parent_run_id"]
        on_run = {a.path.removeprefix("plots/").removesuffix(".png") for a in client.list_artifacts(parent_id, "plots")}
        in_dir = {p.stem for p in (work / "rep" / name).glob("*.png") if p.stat().st_size > 1000}
        assert wanted <= on_run, (name, on_run)
        assert wanted <= in_dir, (name, in_dir)
    multi_plots = {a.path for a in client.list_artifacts(load(work, "multi").user_attrs["mlflow_parent_run_id"], "plots")}
    assert "plots/contour_temperature_alpha.png" not in multi_plots  # alpha is not searched there


# ---------------------------------------------------------------- grid, hyperband, timeout

GRID = (PLAIN.replace("sampler: {{name: {sampler}, seed: 0}}", "sampler: {{name: grid, seed: 0, grid: {{temperature: [2.0, 8.0], alpha: [0.0, 0.5]}}}}")
        .replace("pruner: {{name: none}}", "pruner: {{name: hyperband, n_warmup_steps: 1}}"))
assert GRID != PLAIN


def test_grid_sampler_with_hyperband_covers_the_grid_across_a_resume(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "grid", study_cache, GRID, n_trials=2)
    assert main(["study", "run", str(path), "--no-progress"]) == 0
    assert main(["study", "resume", "grid", "--n-trials", "2", "--no-progress"]) == 0
    study = load(tmp_path, "grid")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {(t.params["temperature"], t.params["alpha"]) for t in trials} == {(2.0, 0.0), (2.0, 0.5), (8.0, 0.0), (8.0, 0.5)}
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    for t in trials:  # validation accuracy reached the pruner every epoch (2 epochs)
        assert set(t.intermediate_values) <= {1, 2} and 1 in t.intermediate_values
    client = client_for(tmp_path)
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}
    assert sorted((int(r.data.tags["trial_number"]), r.info.status) for r in trial_runs(client, "grid")) == \
        [(t.number, status[t.state.name]) for t in trials]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["study.pruner"] == "hyperband"


def test_timeout_stops_the_study(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "late", study_cache, PLAIN, sampler="random", n_trials=100)
    assert main(["study", "run", str(path), "--timeout", "1", "--no-progress"]) == 0
    study = load(tmp_path, "late")
    trials = study.get_trials()
    # A trial takes some tenths of a second at the least (its MLflow logging alone): a 1 s
    # timeout stops far short of the 100 asked for; no trial is started after it and cut short.
    assert 1 <= len(trials) < 100
    assert all(t.state.is_finished() for t in trials)
    client = client_for(tmp_path)
    assert len(trial_runs(client, "late")) == len(trials)
    assert not [r for r in all_runs(client, "late") if r.info.status == "RUNNING"]
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
