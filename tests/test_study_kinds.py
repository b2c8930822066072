"""Studies that search a temperature or weighting kind with conditional knobs (Optuna define-by-run):
the search file is validated in one line, each trial draws only its kind's knobs, the trial's config
and its MLflow run carry that kind, and the report groups trials by kind."""

from __future__ import annotations

import contextlib
import io

import optuna
import pytest
import yaml

from research.cli import main
from research.config import ConfigError, StudyConfig, parse
from research.sweep import make_sampler, trial_config

from .study_support import blank_db, chdir_to, client_for, keep_torch_threads, load, study_cache, trial_runs, write_study  # noqa: F401

BASE = {
    "name": "kinds",
    "data": {"dataset": "mnist1d"},
    "teachers": [{"model": {"name": "mnist1d_cnn"}}, {"model": {"name": "mnist1d_cnn"}, "seed": 1}],
    "student": {"name": "mnist1d_mlp"},
}
SEARCH = {
    "temperature": None,
    "alpha": None,
    "params": {
        "distill.temperature.kind": {"choices": ["fixed", "annealed", "standardized", "learnable"]},
        "distill.temperature.value": {"low": 1.0, "high": 20.0, "log": True, "when": {"distill.temperature.kind": "fixed"}},
        "distill.temperature.start": {"low": 4.0, "high": 16.0, "when": {"distill.temperature.kind": "annealed"}},
        "distill.temperature.end": {"low": 1.0, "high": 4.0, "when": {"distill.temperature.kind": "annealed"}},
        "distill.temperature.base": {"low": 1.0, "high": 8.0, "when": {"distill.temperature.kind": "standardized"}},
        "distill.weighting.kind": {"choices": ["fixed", "ca_mkd", "entropy"]},
        "distill.combine": {"choices": ["probs", "kl_sum"]},
    },
}
KNOBS = {"fixed": {"value"}, "annealed": {"start", "end"}, "standardized": {"base"}, "learnable": set()}


def study_cfg(search=SEARCH, **extra) -> StudyConfig:
    return parse(StudyConfig, {**BASE, "search": search, "enqueue": [], **extra})


def test_each_trial_draws_only_its_kinds_knobs_and_builds_a_valid_config():
    cfg = study_cfg()
    study = optuna.create_study(sampler=make_sampler(cfg), direction="maximize")
    seen = set()
    for _ in range(24):
        trial = study.ask()
        values = cfg.search_encoder().suggest(trial)
        kind = values["distill.temperature.kind"]
        drawn = {k.rsplit(".", 1)[1] for k in values if k.startswith("distill.temperature.") and not k.endswith(".kind")}
        assert drawn == KNOBS[kind], (kind, values)
        tcfg = trial_config(cfg, values)
        temp = tcfg.distill.temperature
        assert temp["kind"] == kind and set(temp) - {"kind"} == KNOBS[kind]  # a fresh spec: no knob of another kind
        assert tcfg.distill.weighting == {"kind": values["distill.weighting.kind"]}
        seen.add(kind)
        study.tell(trial, 0.5)
    assert seen == set(KNOBS)


def test_a_knob_searched_without_the_kind_applies_to_the_files_spec():
    search = {"temperature": None, "alpha": None, "params": {"distill.temperature.value": {"low": 2.0, "high": 8.0}}}
    cfg = study_cfg(search)
    assert trial_config(cfg, {"distill.temperature.value": 3.0}).distill.temperature == {"kind": "fixed", "value": 3.0}
    cfg = study_cfg({"temperature": None, "alpha": None, "params": {"distill.temperature.warmup_epochs": {"low": 0.0, "high": 5.0}}},
                    distill={"temperature": {"kind": "learnable", "t_range": 10.0}})
    assert trial_config(cfg, {"distill.temperature.warmup_epochs": 2.0}).distill.temperature == {
        "kind": "learnable", "t_range": 10.0, "warmup_epochs": 2.0}


@pytest.mark.parametrize("search, extra, match", [
    ({**SEARCH, "temperature": {"low": 1.0, "high": 20.0}}, {},
     r"^config: search.temperature: set it to null when searching distill.temperature\.\*"),
    ({**SEARCH, "teacher_weights": True}, {}, r"search.teacher_weights: searched fixed weights and a searched weighting kind"),
    ({"temperature": None, "params": {"distill.temperature.kind": {"choices": ["fixed", "hot"]}}}, {},
     r"search.params.distill.temperature.kind: \['hot'\] not temperature kinds; available: annealed, "),
    ({"temperature": None, "params": {"distill.temperature.kind": {"choices": ["fixed", "annealed"]},
                                      "distill.temperature.start": {"low": 2.0, "high": 8.0}}}, {},
     r"search.params.distill.temperature.start: temperature kind\(s\) fixed have no knob 'start'; condition it with when"),
    ({"temperature": None, "params": {"distill.temperature.kind": {"choices": ["fixed", "annealed"]},
                                      "distill.temperature.end": {"low": 1.0, "high": 2.0, "when": {"distill.temperature.kind": "cold"}}}}, {},
     r"search.params.distill.temperature.end.when.distill.temperature.kind: 'cold' is not one of its choices"),
    ({"temperature": None, "params": {"train.lr": {"low": 0.001, "high": 0.1},
                                      "train.epochs": {"int_low": 1, "int_high": 3, "when": {"train.lr": 0.01}}}}, {},
     r"search.params.train.epochs.when: train.lr is not a choice"),
    ({"temperature": None, "params": {"distill.weighting.kind": {"choices": ["fixed", "ca_mkd"]}}},
     {"enqueue": [{"distill.weighting.kind": "oracle"}]}, r"enqueue.0.distill.weighting.kind: 'oracle' is not one of"),
])
def test_bad_kind_searches_are_refused_in_one_line(search, extra, match):
    with pytest.raises(ConfigError, match=match):
        parse(StudyConfig, {**BASE, "search": {"alpha": None, **search}, "enqueue": [], **extra})


def test_a_knob_written_before_its_kind_is_drawn_after_it():
    # The search encoder (research.sweep.space) orders a conditional parameter after the choice it names.
    cfg = study_cfg({"temperature": None, "alpha": None, "params": {
        "distill.temperature.start": {"low": 2.0, "high": 8.0, "when": {"distill.temperature.kind": "annealed"}},
        "distill.temperature.kind": {"choices": ["fixed", "annealed"]}}})
    assert cfg.searched_names() == ["distill.temperature.kind", "distill.temperature.start"]


# ---------------------------------------------------------------- end to end: a tiny study over the kinds

TINY = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn, args: {{channels: 8}}}}
    train: {{epochs: 1, threads: 1}}
  - model: {{name: mnist1d_cnn, args: {{channels: 8}}}}
    seed: 1
    train: {{epochs: 1, threads: 1}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 2, threads: 1}}
eval: {{latency_repeats: 1}}
search:
{search}
enqueue:
  - {{distill.temperature.kind: fixed, distill.temperature.value: 4.0, distill.weighting.kind: fixed, distill.combine: probs}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
n_trials: 6
keep_models: 0
"""


@pytest.mark.slow
def test_a_study_searches_kinds_logs_them_per_trial_and_reports_by_kind(tmp_path, study_cache, blank_db):
    mp = pytest.MonkeyPatch()
    chdir_to(mp, tmp_path, blank_db)
    try:
        search = "\n".join("  " + line for line in yaml.safe_dump(SEARCH, sort_keys=False, default_flow_style=None).splitlines())
        path = write_study(tmp_path, "kinds_e2e", study_cache, TINY, search=search)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["study", "run", str(path), "--no-progress"]) == 0
            assert main(["study", "report", "kinds_e2e", "--out", str(tmp_path / "rep")]) == 0
        study = load(tmp_path, "kinds_e2e")
        trials = study.get_trials()
        assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
        runs = {r.info.run_id: r for r in trial_runs(client_for(tmp_path), "kinds_e2e")}
        kinds = set()
        for t in trials:
            params = runs[t.user_attrs["mlflow_run_id"]].data.params
            kind = t.params["distill.temperature.kind"]
            kinds.add(kind)
            assert params["distill.temperature.kind"] == kind
            logged = {k.rsplit(".", 1)[1] for k in params if k.startswith("distill.temperature.") and not k.endswith(".kind")}
            assert logged == KNOBS[kind], (kind, logged)
            assert params["distill.weighting.kind"] == t.params["distill.weighting.kind"]
            if kind == "learnable":  # its temperature is logged per epoch
                history = client_for(tmp_path).get_metric_history(t.user_attrs["mlflow_run_id"], "objective_temperature")
                assert [m.step for m in history] == [1, 2]
        assert len(kinds) >= 2
        report = (tmp_path / "rep" / "report.md").read_text()
        assert "## Completed trials by kind" in report
        for kind in kinds:
            assert f"| distill.temperature.kind | {kind} |" in report
    finally:
        mp.undo()
