"""Selection that is not noise: trials measured by repeats over seeds or by k-fold
cross-validation (``search.repeats``, ``search.folds``), and finalize's paired comparison of
the best configuration against the enqueued default on the same seeds.

Expected values are worked out by hand in the comments (the t quantiles from a printed
table: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,3} = 3.182). Two tiny real
studies (MLflow SQLite, Optuna journal) check what a trial with repeats or folds stores."""

import contextlib
import hashlib
import io
import math
import re
import statistics

import optuna
import pytest
import torch
from optuna.trial import TrialState

from research.cli import main
from research.config import ConfigError, StudyConfig, config_hash, parse
from research.data import Split, kfold_indices, kfold_splits
from research.report.study import study_markdown
from research.stats import format_paired_diff, mean_se, paired_sentence, paired_t_ci
from research.sweep import PruningTarget, measurements, repeat_seed
from research.sweep.objective import _running_mean_pruning

from .study_support import TINY_STUDY, blank_db, chdir_to, client_for, keep_torch_threads, load, study_cache, trial_runs, write_study  # noqa: F401


def study_cfg(search: dict, **extra) -> StudyConfig:
    raw = {"name": "rep", "data": {"dataset": "mnist1d"}, "student": {"name": "mlp", "args": {"widths": [32]}},
           "teachers": [{"model": {"name": "mnist1d_cnn"}}], "search": search, "enqueue": [], **extra}
    return parse(StudyConfig, raw)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("search", "message"), [
    ({"repeats": 0}, r"search\.repeats: Input should be greater than or equal to 1"),
    ({"folds": -1}, r"search\.folds: Input should be greater than or equal to 0"),
    ({"folds": 1}, r"search: folds must be 0 \(no cross-validation\) or at least 2, got 1"),
    ({"repeats": 3, "folds": 5}, r"search: repeats \(3\) and folds \(5\) exclude each other"),
])
def test_bad_repeats_and_folds_are_refused_in_one_line(search, message):
    with pytest.raises(ConfigError, match=message) as e:
        study_cfg(search)
    assert "\n" not in str(e.value)


def test_repeats_or_folds_alone_are_valid_and_a_compression_study_refuses_them():
    assert study_cfg({"repeats": 3}).search.measurements == 3
    assert study_cfg({"folds": 5}).search.measurements == 5
    assert study_cfg({"repeats": 1, "folds": 4}).search.measurements == 4
    assert study_cfg({}).search.measurements == 1
    with pytest.raises(ConfigError, match=r"only a distillation study repeats or cross-validates"):
        study_cfg({"temperature": None, "alpha": None, "params": {"compress.sparsity": {"low": 0.3, "high": 0.9}}, "repeats": 2},
                  compress={"method": "prune"})


def test_the_defaults_leave_the_config_and_its_hash_as_before():
    """A study file written before repeats and folds existed must join its own study."""
    plain, explicit = study_cfg({}), study_cfg({"repeats": 1, "folds": 0})
    assert "repeats" not in plain.model_dump(mode="json")["search"] and "folds" not in plain.model_dump(mode="json")["search"]
    assert config_hash(plain) == config_hash(explicit)
    assert config_hash(study_cfg({"repeats": 2})) != config_hash(plain)
    assert study_cfg({"repeats": 2}).model_dump(mode="json")["search"]["repeats"] == 2


# ---------------------------------------------------------------- folds and seeds


def test_kfold_indices_by_hand():
    # The seeded permutation of range(10) is cut into parts of 4, 3, 3 (10 = 3 * 3 + 1: the
    # first part one larger); fold i validates on part i, sorted, and trains on the rest.
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    parts = [sorted(perm[0:4]), sorted(perm[4:7]), sorted(perm[7:10])]
    folds = kfold_indices(10, 3, seed=0)
    assert [va.tolist() for _, va in folds] == parts
    for (tr, va), part in zip(folds, parts):
        assert tr.tolist() == sorted(set(range(10)) - set(part))
        assert tr.dtype == va.dtype == torch.int64
    vals = [set(va.tolist()) for _, va in folds]
    assert [len(v) for v in vals] == [4, 3, 3]
    assert set().union(*vals) == set(range(10)) and sum(len(v) for v in vals) == 10  # disjoint and covering
    # The same seed gives the same folds; another seed other ones.
    assert [va.tolist() for _, va in kfold_indices(10, 3, seed=0)] == parts
    assert [va.tolist() for _, va in kfold_indices(10, 3, seed=1)] != parts
    # k = n: leave-one-out, one sample per fold.
    assert sorted(va.item() for _, va in kfold_indices(4, 4, seed=3)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("n", "k", "message"), [(10, 1, "k >= 2"), (3, 4, "4 folds of 3 samples")])
def test_kfold_indices_refuse_impossible_folds(n, k, message):
    with pytest.raises(ValueError, match=message):
        kfold_indices(n, k, seed=0)


def test_kfold_splits_carry_the_samples_of_their_indices():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # row i is [2i, 2i + 1]
    data = Split(x, torch.arange(6) % 3)
    for (tr, va), (itr, iva) in zip(kfold_splits(data, 2, seed=5), kfold_indices(6, 2, seed=5)):
        assert tr.x[:, 0].tolist() == [2.0 * i for i in itr.tolist()] and va.y.tolist() == [i % 3 for i in iva.tolist()]


def test_repeat_seeds_follow_the_documented_rule():
    assert repeat_seed(7, 0) == 7  # repeat 0 is the run a plain trial makes
    for index in (1, 2):  # the first 4 bytes of sha256("<seed>/repeat/<index>"), below 2**31
        expected = int(hashlib.sha256(f"7/repeat/{index}".encode()).hexdigest()[:8], 16) % 2**31
        assert repeat_seed(7, index) == expected
    assert len({repeat_seed(7, i) for i in range(5)}) == 5


def test_measurements_of_repeats_and_of_folds():
    reps = measurements(study_cfg({"repeats": 3}, seed=4), n_train=100)
    assert [(m.kind, m.index, m.seed, m.fold) for m in reps] == [("repeat", i, repeat_seed(4, i), None) for i in range(3)]
    folds = measurements(study_cfg({"folds": 2}, seed=4), n_train=10)
    assert [(m.kind, m.index, m.seed) for m in folds] == [("fold", 0, 4), ("fold", 1, 4)]  # every fold: the study's seed
    assert [m.fold[1].tolist() for m in folds] == [va.tolist() for _, va in kfold_indices(10, 2, seed=4)]  # folds by the study's seed
    plain = measurements(study_cfg({}, seed=4), n_train=10)
    assert [(m.kind, m.seed) for m in plain] == [("repeat", 4)]


def test_a_fold_trains_and_validates_on_its_parts_of_train_plus_val():
    from research.data import DataBundle

    def split(lo, hi):
        return Split(torch.arange(lo, hi, dtype=torch.float32)[:, None], torch.zeros(hi - lo, dtype=torch.int64))

    data = DataBundle("toy", train=split(0, 6), val=split(6, 8), test=split(100, 103), transfer=None, num_classes=1,
                      input_shape=(1,), augment=None)
    fold = measurements(study_cfg({"folds": 2}, seed=0), n_train=8)[1]
    d = fold.data(data)
    assert d.val.x[:, 0].tolist() == [float(i) for i in fold.fold[1].tolist()]  # train + val is samples 0..7 in order
    assert sorted(d.train.x[:, 0].tolist() + d.val.x[:, 0].tolist()) == [float(i) for i in range(8)]
    assert d.test is data.test and len(d.val) == 4


def test_the_trial_run_holds_means_summed_times_and_the_objectives_standard_error():
    from research.pipeline import RunResult
    from research.sweep import measured_summary

    results = [RunResult("trial_repeat", 0, None, {"val_accuracy": 0.7, "test_accuracy": 0.6, "train_time_s": 2.0, "params": 100.0, "only_here": 1.0}),
               RunResult("trial_repeat", 1, None, {"val_accuracy": 0.8, "test_accuracy": 0.7, "train_time_s": 3.0, "params": 100.0})]
    out = measured_summary(study_cfg({"repeats": 2}), results)
    # means .75 and .65; times add up (2 + 3 s: what the trial cost); SE of .7, .8 is .05 (test_mean_se_...)
    assert out == {"val_accuracy": pytest.approx(0.75), "test_accuracy": pytest.approx(0.65), "train_time_s": 5.0, "params": 100.0,
                   "val_accuracy_se": pytest.approx(0.05)}


# ---------------------------------------------------------------- pruning on the running mean


def test_pruning_reports_the_running_mean_at_the_global_step():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.55))
    trial = study.ask()
    reps = measurements(study_cfg({"repeats": 3}), n_train=10)
    done = [0.5]  # repeat 0 finished at 0.5
    report = _running_mean_pruning(trial, PruningTarget("val_accuracy"), done, reps[1], epochs=3)
    report(1, {"val_loss": 1.0})  # no target metric: nothing reported
    report(1, {"val_accuracy": 0.7})  # (0.5 + 0.7) / 2 = 0.6 at step 1 * 3 + 1 = 4: above 0.55, kept
    with pytest.raises(optuna.TrialPruned, match=r"repeat 1, epoch 2 \(running mean val_accuracy 0\.5000\)"):
        report(2, {"val_accuracy": 0.5})  # (0.5 + 0.5) / 2 = 0.5 at step 5: below 0.55, pruned
    assert study.trials[0].intermediate_values == {4: pytest.approx(0.6), 5: pytest.approx(0.5)}
    # A metric that improves the other way is negated, as a plain trial's is.
    low = _running_mean_pruning(trial, PruningTarget("val_ece", -1.0), [0.2], reps[1], epochs=3)
    with pytest.raises(optuna.TrialPruned):  # -(0.2 + 0.4) / 2 = -0.3 at step 6: below 0.55
        low(3, {"val_ece": 0.4})
    assert study.trials[0].intermediate_values[6] == pytest.approx(-0.3)


# ---------------------------------------------------------------- statistics


def test_mean_se_is_the_sample_std_over_root_n():
    # 0.7, 0.8: mean 0.75, sample std sqrt((0.05^2 * 2) / 1) = 0.0707..., / sqrt(2) = 0.05
    assert mean_se([0.7, 0.8]) == pytest.approx((0.75, 0.05))
    # 1, 2, 4: sample std sqrt(7/3) (see test_stats), / sqrt(3) = sqrt(7) / 3 = 0.8819
    assert mean_se([1, 2, 4]) == pytest.approx((7 / 3, math.sqrt(7) / 3))
    mean, se = mean_se([3.0])
    assert mean == 3.0 and math.isnan(se)


def test_paired_t_ci_golden_values():
    # d = [1, 2, 3]: mean 2, sd 1, t_{0.975,2} = 4.303: 2 ± 4.303 / sqrt(3) = 2 ± 2.4843
    d = paired_t_ci([1, 2, 3], [0, 0, 0])
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert d.low == pytest.approx(2 - 2.4843, abs=1e-3) and d.high == pytest.approx(2 + 2.4843, abs=1e-3)
    assert not d.excludes_zero
    # best .80 .78 .79 .81 against default .79 .78 .77 .80: d = .01 0 .02 .01, mean .01,
    # sd sqrt((0 + .0001 + .0001 + 0) / 3) = .0081650, t_{0.975,3} = 3.182: ± 3.182 * .0081650 / 2 = ± .012990
    d = paired_t_ci([0.80, 0.78, 0.79, 0.81], [0.79, 0.78, 0.77, 0.80])
    assert d.mean == pytest.approx(0.01) and d.sd == pytest.approx(0.0081650, abs=1e-6)
    assert (d.low, d.high) == (pytest.approx(-0.002990, abs=2e-5), pytest.approx(0.022990, abs=2e-5))
    # a clear gain: d = 2, 3, 4: mean 3, sd 1: 3 ± 2.4843 lies above 0
    assert paired_t_ci([12, 13, 14], [10, 10, 10]).excludes_zero
    # one pair: its difference, no interval
    one = paired_t_ci([0.8], [0.75])
    assert one.mean == pytest.approx(0.05) and math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero


@pytest.mark.parametrize(("a", "b", "message"), [([1, 2], [1], "equal lengths"), ([], [], "no values"), ([1, float("nan")], [0, 0], "NaN")])
def test_paired_t_ci_refuses_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_t_ci(a, b)


def test_the_paired_sentence_says_whether_the_search_helped():
    assert format_paired_diff(3, 0.002, -0.019, 0.023) == \
        "best - default = +0.20 points (95% CI -1.90 to +2.30, 3 seeds): not distinguishable from the default"
    assert format_paired_diff(3, 0.03, 0.005, 0.055).endswith("(95% CI +0.50 to +5.50, 3 seeds): the search helped")
    assert format_paired_diff(3, -0.03, -0.055, -0.005).endswith(": the default was better")
    assert format_paired_diff(3, -0.03, -0.055, -0.005, direction="minimize").endswith(": the search helped")  # an error rate
    assert format_paired_diff(1, 0.002) == "best - default = +0.20 points (1 seed): a confidence interval needs >= 2 seeds, so this says nothing yet"
    assert paired_sentence({"diff_mean": 0.002, "seeds": 1.0}) == format_paired_diff(1, 0.002)
    assert paired_sentence({"default_is_best": 1.0}).startswith("the best trial is the enqueued default itself")
    assert paired_sentence(None) is None and paired_sentence({}) is None


def test_the_report_says_in_one_sentence_whether_the_search_bought_anything():
    rows = [{"number": 0, "state": "COMPLETE", "values": [0.76], "params": {"temperature": 4.0}, "enqueued": True},
            {"number": 1, "state": "COMPLETE", "values": [0.79], "params": {"temperature": 9.0}, "enqueued": False}]
    final = {"final_best_test_accuracy_mean": 0.7787, "final_best_test_accuracy_std": 0.0101, "final_best_seeds": 3.0, "final_best_trial": 1.0,
             "final_default_test_accuracy_mean": 0.7767, "final_default_test_accuracy_std": 0.0045, "final_default_seeds": 3.0,
             "final_default_trial": 0.0}
    paired = {"final_paired_diff_mean": 0.002, "final_paired_diff_ci_low": -0.019, "final_paired_diff_ci_high": 0.023, "final_paired_seeds": 3.0}
    md = study_markdown("s", rows, objective_names=["val_accuracy"], directions=["maximize"], parent_metrics={**final, **paired})
    assert ("Paired over seeds, test accuracy: best - default = +0.20 points (95% CI -1.90 to +2.30, 3 seeds): "
            "not distinguishable from the default.") in md
    assert "Paired over seeds" not in study_markdown("s", rows, objective_names=["val_accuracy"], directions=["maximize"], parent_metrics=final)


# ---------------------------------------------------------------- real studies

# A plain search with an enqueued default and no pruning (every trial completes, but reports
# the running mean to the pruner every epoch); {measure}
# is the repeats or folds line. One-epoch teacher, two-epoch students: a few seconds.
MEASURED = TINY_STUDY + """  {measure}
enqueue: [{{temperature: 4.0, alpha: 0.1}}]
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 100}}  # reports every epoch, never prunes
n_trials: {n_trials}
keep_models: 1
"""


def _children(client, run) -> list:
    return client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")


@pytest.mark.slow
def test_a_study_with_repeats_logs_each_repeat_and_finalize_compares_best_and_default(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "reps", study_cache, MEASURED, measure="repeats: 2", n_trials=2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", "run", str(path), "--no-progress"]) == 0
    study = load(tmp_path, "reps")
    client = client_for(tmp_path)
    runs = {r.info.run_id: r for r in trial_runs(client, "reps")}
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 and len(runs) == 2  # one trial run each, children aside
    for t in study.trials:
        each = t.user_attrs["val_accuracy_per_repeat"]
        assert len(each) == 2 and t.value == pytest.approx(statistics.fmean(each))
        assert t.user_attrs["val_accuracy_mean"] == pytest.approx(t.value)
        assert t.user_attrs["val_accuracy_se"] == pytest.approx(abs(each[0] - each[1]) / 2)  # n = 2: sd |a - b| / sqrt 2, / sqrt 2
        # the pruner saw the running mean at steps repeat * 2 epochs + epoch: repeat 0 alone, then its mean with repeat 1
        steps = t.intermediate_values
        assert sorted(steps) == [1, 2, 3, 4]
        assert steps[2] == pytest.approx(each[0]) and steps[4] == pytest.approx(t.value)
        run = runs[t.user_attrs["mlflow_run_id"]]
        history = client.get_metric_history(run.info.run_id, "val_accuracy_per_repeat")
        assert sorted((m.step, m.value) for m in history) == [(0, pytest.approx(each[0])), (1, pytest.approx(each[1]))]
        assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)
        assert run.data.metrics["val_accuracy_se"] == pytest.approx(t.user_attrs["val_accuracy_se"])
        kids = sorted(_children(client, run), key=lambda r: int(r.data.tags["repeat"]))
        assert [k.data.tags["role"] for k in kids] == ["trial_repeat"] * 2 and all(k.info.status == "FINISHED" for k in kids)
        assert [int(k.data.params["seed"]) for k in kids] == [0, repeat_seed(0, 1)]
        assert [k.data.metrics["val_accuracy"] for k in kids] == pytest.approx(each)
        assert run.data.metrics["test_accuracy"] == pytest.approx(statistics.fmean(k.data.metrics["test_accuracy"] for k in kids))
    assert re.search(r"val_accuracy 0\.\d{4} ± 0\.\d{4} SE \(2 repeats\)", out.getvalue())
    best = max(study.trials, key=lambda t: (t.value, -t.number))
    assert best.number != 0, "precondition: the weak default (alpha 0.1 after 2 epochs) is not the best here"

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", "finalize", "reps", "--seeds", "2", "--no-progress"]) == 0
        assert main(["study", "report", "reps", "--out", str(tmp_path / "rep")]) == 0
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    acc = {}
    for label in ("best", "default"):
        finals = client.search_runs([parent.info.experiment_id], f"tags.role = 'final_{label}'")
        acc[label] = {int(r.data.params["seed"]): r.data.metrics["test_accuracy"] for r in finals}
    assert sorted(acc["best"]) == sorted(acc["default"]) == [0, 1]  # the same seeds
    d = [acc["best"][s] - acc["default"][s] for s in (0, 1)]
    mean = (d[0] + d[1]) / 2
    half = 12.706 * (abs(d[0] - d[1]) / math.sqrt(2)) / math.sqrt(2)  # t_{0.975,1} sd / sqrt(n), sd of two: |a - b| / sqrt 2
    m = parent.data.metrics
    assert m["final_paired_diff_mean"] == pytest.approx(mean) and m["final_paired_seeds"] == 2
    assert m["final_paired_diff_ci_low"] == pytest.approx(mean - half, abs=1e-4) and m["final_paired_diff_ci_high"] == pytest.approx(mean + half, abs=1e-4)
    assert m["final_paired_excludes_zero"] == float(mean - half > 0 or mean + half < 0)
    sentence = format_paired_diff(2, mean, mean - half, mean + half)
    printed = out.getvalue()
    assert f"best - default = {100 * mean:+.2f} points (95% CI " in printed and sentence.split(" (95% CI ")[0] in printed
    assert re.search(r"best - default = [+-]\d+\.\d\d points \(95% CI [+-]\d+\.\d\d to [+-]\d+\.\d\d, 2 seeds\): "
                     r"(the search helped|not distinguishable from the default|the default was better)", printed)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "each trial: mean of 2 repeats" in md
    assert re.search(r"Paired over seeds, test accuracy: best - default = [+-]\d+\.\d\d points \(95% CI .*, 2 seeds\): ", md)
    # the kept model of the best trial is rebuilt from its first repeat's weights
    assert "model" in {a.path for a in client.list_artifacts(best.user_attrs["mlflow_run_id"])}


@pytest.mark.slow
def test_a_study_with_folds_validates_each_fold_once(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "folds", study_cache, MEASURED, measure="folds: 2", n_trials=1)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["study", "run", str(path), "--no-progress"]) == 0
    (t,) = load(tmp_path, "folds").trials
    client = client_for(tmp_path)
    (run,) = trial_runs(client, "folds")
    kids = sorted(_children(client, run), key=lambda r: int(r.data.tags["fold"]))
    assert [k.data.tags["role"] for k in kids] == ["trial_fold"] * 2 and [k.data.params["seed"] for k in kids] == ["0", "0"]
    each = t.user_attrs["val_accuracy_per_fold"]
    assert [k.data.metrics["val_accuracy"] for k in kids] == pytest.approx(each) and t.value == pytest.approx(statistics.fmean(each))
    # MNIST-1D's 4000 training samples (train + val): each fold trains on the other half
    assert [k.data.metrics["train_samples"] for k in kids] == [2000.0, 2000.0]
    assert run.data.tags["measured_by"] == "fold" and t.user_attrs["measured_by"] == "fold"
