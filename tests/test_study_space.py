"""The search encoder (research.sweep.space): trial parameters <-> config overrides.

Expected values are written by hand from the documented encodings (the value itself
for ranges and scalar choices, JSON text for list choices, w_k normalised by their sum
for teacher weights, the largest weight scaled to 1 when encoding). Real Optuna
in-memory studies check what a trial really stores; one tiny real study (MLflow
SQLite, Optuna journal) checks a conditional parameter end to end.
"""

import contextlib
import io
import re

import optuna
import pytest

from research.cli import main
from research.config import ConfigError, StudyConfig, parse
from research.sweep import SearchEncoder, SearchSpace, SpaceError, trial_config

from .study_support import PLAIN, blank_db, chdir_to, client_for, keep_torch_threads, load, study_cache, trial_runs, write_study  # noqa: F401

THREE_TEACHERS = [{"model": {"name": "mnist1d_cnn"}, "seed": s} for s in range(3)]


def study_cfg(search, teachers=1, **extra) -> StudyConfig:
    raw = {"name": "space", "data": {"dataset": "mnist1d"}, "student": {"name": "mlp", "args": {"widths": [32]}},
           "teachers": THREE_TEACHERS[:teachers], "search": search, "enqueue": [], **extra}
    return parse(StudyConfig, raw)


def encoder(search, teachers=1) -> SearchEncoder:
    return study_cfg(search, teachers).search_encoder()


# Every kind of dimension at once: the shorthands, K=3 weights, an int, a log float,
# a list choice, a mixed choice, and a parameter drawn only for one choice of another.
FULL = {
    "temperature": {"low": 1.0, "high": 20.0, "log": True},
    "alpha": {"low": 0.0, "high": 1.0},
    "teacher_weights": True,
    "params": {
        "train.momentum": {"low": 0.5, "high": 0.99, "when": {"train.optimizer": "sgd"}},  # listed before its condition
        "train.optimizer": {"choices": ["sgd", "adam"]},
        "train.epochs": {"int_low": 1, "int_high": 10},
        "train.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
        "student.args.widths": {"choices": [[8], [64, 64]]},
        "student.args.dropout": {"choices": [None, 0.5]},
    },
}

# (stored params, config values): pairs written out by hand
POINTS = [
    (
        {"temperature": 4.0, "alpha": 0.1, "w_0": 1.0, "w_1": 0.5, "w_2": 0.5, "train.optimizer": "sgd", "train.momentum": 0.8,
         "train.epochs": 3, "train.lr": 0.01, "student.args.widths": "[64, 64]", "student.args.dropout": 0.5},
        {"distill.temperature": 4.0, "distill.alpha": 0.1, "distill.teacher_weights": [0.5, 0.25, 0.25], "train.optimizer": "sgd",
         "train.momentum": 0.8, "train.epochs": 3, "train.lr": 0.01, "student.args.widths": [64, 64], "student.args.dropout": 0.5},
    ),
    (
        {"temperature": 20.0, "alpha": 0.0, "w_0": 0.25, "w_1": 1.0, "w_2": 0.75, "train.optimizer": "adam",
         "train.epochs": 10, "train.lr": 1.0e-4, "student.args.widths": "[8]", "student.args.dropout": None},
        {"distill.temperature": 20.0, "distill.alpha": 0.0, "distill.teacher_weights": [0.125, 0.5, 0.375], "train.optimizer": "adam",
         "train.epochs": 10, "train.lr": 1.0e-4, "student.args.widths": [8], "student.args.dropout": None},
    ),
]


def test_names_follow_the_file_except_that_a_condition_comes_first():
    assert encoder(FULL, teachers=3).names == ["temperature", "alpha", "w_0", "w_1", "w_2", "train.optimizer", "train.momentum",
                                               "train.epochs", "train.lr", "student.args.widths", "student.args.dropout"]
    # the published shorthands' names and keys, unchanged
    enc = encoder({"params": {"train.lr": {"low": 0.001, "high": 0.1}}})
    assert enc.names == ["temperature", "alpha", "train.lr"]
    assert enc.decode({"temperature": 4.0, "alpha": 0.1, "train.lr": 0.01}) == {"distill.temperature": 4.0, "distill.alpha": 0.1, "train.lr": 0.01}


@pytest.mark.parametrize("i", range(len(POINTS)))
def test_decode_and_encode_are_each_others_inverse(i):
    enc = encoder(FULL, teachers=3)
    params, values = POINTS[i]
    assert enc.decode(params) == values
    assert enc.encode(values) == params
    assert enc.encode(enc.decode(params)) == params
    assert enc.decode(enc.encode(values)) == values
    shown = enc.display(params)
    assert shown["teacher_weights"] == values["distill.teacher_weights"] and shown["temperature"] == values["distill.temperature"]
    assert "w_0" not in shown and shown["student.args.widths"] == values["student.args.widths"]


def test_teacher_weights_forget_their_scale_and_encode_to_the_largest_being_one():
    enc = encoder({"alpha": None, "teacher_weights": True}, teachers=3)
    half = {"temperature": 4.0, "w_0": 0.5, "w_1": 0.25, "w_2": 0.25}
    assert enc.decode(half)["distill.teacher_weights"] == [0.5, 0.25, 0.25]
    assert enc.encode(enc.decode(half)) == {"temperature": 4.0, "w_0": 1.0, "w_1": 0.5, "w_2": 0.5}
    assert enc.encode({"distill.teacher_weights": [2, 4, 1]}) == {"w_0": 0.5, "w_1": 1.0, "w_2": 0.25}
    with pytest.raises(SpaceError, match="below 0.001 x the largest"):
        enc.encode({"distill.teacher_weights": [1.0, 0.0001, 0.5]})  # draws lie in [1e-3, 1]
    with pytest.raises(SpaceError, match="a list of 3 weights"):
        enc.encode({"distill.teacher_weights": [0.5, 0.5]})


def test_a_conditional_parameter_is_drawn_decoded_and_encoded_only_under_its_condition():
    enc = encoder({"temperature": None, "alpha": None, "params": FULL["params"]})
    adam = {"train.optimizer": "adam", "train.epochs": 2, "train.lr": 0.01, "student.args.widths": "[8]", "student.args.dropout": None}
    assert enc.decode(adam)["train.optimizer"] == "adam" and "train.momentum" not in enc.decode(adam)
    assert enc.encode(enc.decode(adam)) == adam
    with pytest.raises(SpaceError, match=r"train.momentum: only searched when train.optimizer is 'sgd'"):
        enc.encode({"train.optimizer": "adam", "train.momentum": 0.9})
    assert enc.encode({"train.momentum": 0.9}) == {"train.momentum": 0.9}  # optimizer left to the sampler: allowed
    with pytest.raises(SpaceError, match="lacks train.momentum"):
        enc.decode({**adam, "train.optimizer": "sgd"})
    with pytest.raises(SpaceError, match="not in this search space"):
        enc.decode({**adam, "beta": 1.0})


def test_values_outside_the_space_are_refused_by_name():
    enc = encoder(FULL, teachers=3)
    for values, message in [({"distill.temperature": 50.0}, r"temperature: 50.0 is outside \[1.0, 20.0\]"),
                            ({"train.epochs": 2.5}, r"train.epochs: 2.5 is not an integer"),
                            ({"train.epochs": 11}, r"train.epochs: 11 is outside \[1, 10\]"),
                            ({"student.args.widths": [16]}, r"student.args.widths: \[16\] is not one of the choices"),
                            ({"distill.beta": 1.0}, "distill.beta not searched")]:
        with pytest.raises(SpaceError, match=message):
            enc.encode(values)


def test_suggest_on_real_trials_stores_the_documented_parameters():
    """Enqueued (fixed) points through real Optuna trials: what the trial stores and the overrides returned."""
    enc = encoder(FULL, teachers=3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params, values in POINTS:
        study.enqueue_trial(params)
        trial = study.ask()
        assert enc.suggest(trial) == values
        assert trial.params == params
        assert trial.user_attrs["teacher_weights"] == values["distill.teacher_weights"]
        study.tell(trial, 0.0)


def test_random_draws_store_the_conditional_parameter_exactly_when_its_condition_holds():
    enc = encoder({"temperature": None, "alpha": None, "params": {"train.optimizer": {"choices": ["sgd", "adam"]},
                                                                   "train.momentum": {"low": 0.5, "high": 0.99, "when": {"train.optimizer": ["sgd"]}}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = enc.suggest(trial)
        seen.add(values["train.optimizer"])
        assert ("train.momentum" in trial.params) == (values["train.optimizer"] == "sgd"), trial.params
        assert enc.decode(trial.params) == values
        study.tell(trial, 0.0)
    assert seen == {"sgd", "adam"}


def test_trial_config_applies_the_values_exactly():
    cfg = study_cfg({"alpha": None, "teacher_weights": True}, teachers=3)
    weights = [1 / 3, 0.2, 1 - 1 / 3 - 0.2]
    tcfg = trial_config(cfg, {"distill.teacher_weights": weights, "distill.temperature": 3.0000000000000004, "student.args.widths": [64, 64]})
    assert tcfg.distill.teacher_weights == weights  # bit for bit, through the YAML overrides
    assert tcfg.distill.temperature == 3.0000000000000004 and tcfg.student.args == {"widths": [64, 64]}
    assert cfg.distill.teacher_weights is None  # the study's config is left alone


def test_the_search_section_dumps_as_before_unless_a_condition_is_given():
    """A study's config hash is how a joiner proves it runs the same study: an unconditional
    space must dump exactly as it did before conditions existed."""
    assert SearchSpace().model_dump(mode="json") == {
        "temperature": {"low": 1.0, "high": 20.0, "log": True}, "alpha": {"low": 0.0, "high": 1.0, "log": False},
        "teacher_weights": False, "params": {}}
    space = SearchSpace.model_validate({"params": {"train.momentum": {"low": 0.5, "high": 0.9, "when": {"train.optimizer": "sgd"}},
                                                   "train.optimizer": {"choices": ["sgd", "adam"]}}})
    assert space.model_dump(mode="json")["params"] == {"train.momentum": {"low": 0.5, "high": 0.9, "log": False, "when": {"train.optimizer": "sgd"}},
                                                       "train.optimizer": {"choices": ["sgd", "adam"]}}
    assert SearchSpace.model_validate(space.model_dump(mode="json")) == space


# ---------------------------------------------------------------- enqueued points


def test_enqueued_points_by_name_or_key_become_the_documented_params():
    cfg = study_cfg({"teacher_weights": True, "params": {"student.args.widths": {"choices": [[8], [64, 64]]}}}, teachers=3,
                    enqueue=[{"temperature": 4, "alpha": 0.1},  # an int where a float is searched
                             {"distill.temperature": 20.0, "distill.teacher_weights": [2, 1, 1], "student.args.widths": [8]},
                             {"w_1": 0.5}])
    assert cfg.enqueue[0] == {"temperature": 4.0, "alpha": 0.1} and isinstance(cfg.enqueue[0]["temperature"], float)
    from research.sweep import enqueue_points

    assert enqueue_points(cfg) == [
        {"temperature": 4.0, "alpha": 0.1, "w_0": 1.0, "w_1": 1.0, "w_2": 1.0},  # weights not given: uniform
        {"temperature": 20.0, "w_0": 1.0, "w_1": 0.5, "w_2": 0.5, "student.args.widths": "[8]"},
        {"w_0": 1.0, "w_1": 0.5, "w_2": 1.0},
    ]


ENQUEUE_BAD = {
    "outside": ([{"temperature": 50.0}], r"enqueue.0.temperature: 50.0 is outside \[1.0, 20.0\]"),
    "by key, outside": ([{"distill.temperature": 0.5}], r"enqueue.0.distill.temperature: 0.5 is outside"),
    "not searched": ([{"beta": 1.0}], "enqueue.0: beta not searched; searched: temperature, alpha, train.optimizer, train.momentum"),
    "not a choice": ([{"train.optimizer": "rmsprop"}], "enqueue.0.train.optimizer: 'rmsprop' is not one of the choices"),
    "condition ruled out": ([{}, {"train.optimizer": "adam", "train.momentum": 0.6}],
                            "enqueue.1.train.momentum: only searched when train.optimizer is 'sgd'"),
}


@pytest.mark.parametrize("case", sorted(ENQUEUE_BAD))
def test_bad_enqueued_points_are_refused_naming_the_entry(case):
    points, message = ENQUEUE_BAD[case]
    search = {"params": {"train.optimizer": {"choices": ["sgd", "adam"]},
                         "train.momentum": {"low": 0.5, "high": 0.99, "when": {"train.optimizer": "sgd"}}}}
    with pytest.raises(ConfigError, match=message):
        study_cfg(search, enqueue=points)


# ---------------------------------------------------------------- conditions in the study file


CONDITION_BAD = {
    "unknown parameter": ({"train.momentum": {"low": 0.5, "high": 0.9, "when": {"train.optimiser": "sgd"}}},
                          "search.params.train.momentum.when: train.optimiser is not searched"),
    "not a choice": ({"train.lr": {"low": 0.001, "high": 0.1}, "train.momentum": {"low": 0.5, "high": 0.9, "when": {"train.lr": 0.01}}},
                     "search.params.train.momentum.when: train.lr is not a choice"),
    "value not a choice": ({"train.optimizer": {"choices": ["sgd", "adam"]},
                            "train.momentum": {"low": 0.5, "high": 0.9, "when": {"train.optimizer": "rmsprop"}}},
                           r"search.params.train.momentum.when.train.optimizer: 'rmsprop' is not one of its choices"),
    "cycle": ({"train.optimizer": {"choices": ["sgd", "adam"], "when": {"train.schedule": "step"}},
               "train.schedule": {"choices": ["step", "cosine"], "when": {"train.optimizer": "sgd"}}},
              "conditions form a cycle: search.params.train.optimizer, search.params.train.schedule"),
    "itself": ({"train.optimizer": {"choices": ["sgd", "adam"], "when": {"train.optimizer": "sgd"}}}, "cannot depend on itself"),
    "a shorthand's key again": ({"distill.temperature": {"low": 1.0, "high": 4.0}},
                                r"search.params.distill.temperature: distill.temperature is searched twice \(also by search.temperature\)"),
}


@pytest.mark.parametrize("case", sorted(CONDITION_BAD))
def test_bad_conditions_are_refused_in_one_line_naming_the_field(case):
    params, message = CONDITION_BAD[case]
    with pytest.raises(ConfigError, match=message) as e:
        study_cfg({"params": params})
    assert len(str(e.value).splitlines()) == 1


def test_a_condition_may_name_the_config_key_of_a_shorthand_and_accept_several_values():
    enc = encoder({"temperature": {"low": 1.0, "high": 8.0, "when": {"train.schedule": ["step", "cosine"]}}, "alpha": None,
                   "params": {"train.schedule": {"choices": ["none", "step", "cosine"]}}})
    assert enc.names == ["train.schedule", "temperature"] and enc.conditional
    assert enc.decode({"train.schedule": "none"}) == {"train.schedule": "none"}
    assert enc.decode({"train.schedule": "step", "temperature": 2.0}) == {"train.schedule": "step", "distill.temperature": 2.0}


def test_a_conditional_space_gets_the_grouped_tpe_sampler_and_an_unconditional_one_does_not():
    from research.sweep import make_sampler

    conditional = study_cfg({"params": FULL["params"]})
    plain = study_cfg({})
    assert make_sampler(conditional)._group and not make_sampler(plain)._group


# ---------------------------------------------------------------- a real study


CONDITIONAL = PLAIN.replace(
    "  alpha: {{low: 0.0, high: 1.0}}",
    "  alpha: null\n  params:\n    train.optimizer: {{choices: [sgd, adam]}}\n"
    "    train.momentum: {{low: 0.5, high: 0.99, when: {{train.optimizer: sgd}}}}",
).replace("enqueue: []", "enqueue: [{{train.optimizer: sgd, train.momentum: 0.5}}, {{train.optimizer: adam}}]")
assert "train.momentum" in CONDITIONAL and "enqueue: [{{train" in CONDITIONAL


def test_a_conditional_study_runs_logs_and_finalizes_the_drawn_values(tmp_path, monkeypatch, study_cache, blank_db):
    """Trials that drew adam store no momentum and train with the file's momentum; the
    sgd trials log theirs; the best trial is retrained with its own values."""
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "cond", study_cache, CONDITIONAL, sampler="random", n_trials=3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", "run", str(path), "--no-progress"]) == 0
        assert main(["study", "finalize", "cond", "--seeds", "1", "--no-default", "--no-progress"]) == 0
    study = load(tmp_path, "cond")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params["train.optimizer"] == "sgd" and trials[0].params["train.momentum"] == 0.5
    assert trials[1].params["train.optimizer"] == "adam" and "train.momentum" not in trials[1].params
    runs = {r.info.run_id: r for r in trial_runs(client_for(tmp_path), "cond")}
    for t in trials:
        params = runs[t.user_attrs["mlflow_run_id"]].data.params
        assert params["train.optimizer"] == t.params["train.optimizer"]
        assert float(params["train.momentum"]) == t.params.get("train.momentum", 0.9)  # 0.9: TrainConfig's default
        assert ("trial.train.momentum" in params) == (t.params["train.optimizer"] == "sgd")
    assert re.search(r"train\.optimizer=sgd, train\.momentum=0\.5\b", out.getvalue())  # the enqueued sgd point in the summary
    client = client_for(tmp_path)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    final = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")[0]
    best = trials[int(parent.data.tags["best_trial"])]
    assert final.data.params["train.optimizer"] == best.params["train.optimizer"]
    assert float(final.data.params["train.momentum"]) == best.params.get("train.momentum", 0.9)
