"""`research reproduce`: the paper's table beside the published numbers, one MLflow parent run
with a child per (role, seed), resumable; real MLflow SQLite store, real MNIST-1D, tiny budgets."""

import csv
import shutil

import pytest
from mlflow.tracking import MlflowClient

from research.cli import main
from research.config import ConfigError
from research.pipeline import RunResult
from research.reproduce import Outcome, ReproduceConfig, available_settings, load_setting, seeded, table_rows

# Two 1-epoch CNN teachers (an ensemble), a 1-epoch MLP alone and distilled, 200 transfer samples.
TINY = """\
name: tiny1d
data: {{dataset: mnist1d, cache_dir: {cache}, transfer_size: 200, transfer_seed: 1}}
teachers:
  - {{model: {{name: mnist1d_cnn, args: {{channels: 4}}}}, seed: 0, train: {{epochs: 1, threads: 1}}}}
  - {{model: {{name: mnist1d_cnn, args: {{channels: 4}}}}, seed: 1, train: {{epochs: 1, threads: 1}}}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 1, threads: 1}}
eval: {{latency_repeats: 1}}
tracking: {{uri: "sqlite:///{db}", log_model: false}}
reproduce:
  paper: "Greydanus & Kobak 2024"
  unit: accuracy
  published: {{teacher: 94, student: 68}}
  full: ["train.epochs=2"]
"""


@pytest.fixture
def tiny(workdir, mnist1d_arrays):
    shutil.copytree(mnist1d_arrays, workdir / ".cache")
    path = workdir / "tiny1d.yaml"
    path.write_text(TINY.format(cache=workdir / ".cache", db=workdir / "mlflow.db"))
    return path


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reproduce-tiny1d")
    return client.search_runs([exp.experiment_id], max_results=1000)


def _reproduce(tiny, workdir, seeds):
    return main(["reproduce", str(tiny), "--seeds", str(seeds), "--no-progress", "--out", str(workdir / "reports")])


def test_tiny_setting_writes_the_table_and_resumes(tiny, workdir, capsys):
    assert _reproduce(tiny, workdir, 1) == 0
    runs = _runs(workdir)
    parents = [r for r in runs if r.data.tags.get("role") == "reproduce"]
    assert len(parents) == 1
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    # seed 0: two teachers, their ensemble, the student alone, the distilled student
    assert sorted(r.data.tags["role"] for r in children) == ["distill", "student", "teacher", "teacher", "teacher_ensemble"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.tags["seed"] for r in children if r.data.tags["role"] == "teacher") == ["0", "1"]

    # One more seed: only seed 1's five runs are trained; seed 0 is found under the parent.
    assert _reproduce(tiny, workdir, 2) == 0
    runs = _runs(workdir)
    assert len(runs) == 1 + 10
    assert sorted(r.data.tags["seed"] for r in runs if r.data.tags.get("role") == "teacher") == ["0", "1", "2", "3"]
    assert len([r for r in runs if r.data.tags.get("role") == "reproduce"]) == 1

    # Again: nothing is redone.
    capsys.readouterr()
    assert _reproduce(tiny, workdir, 2) == 0
    assert len(_runs(workdir)) == 11
    assert "0 runs trained" in capsys.readouterr().out

    md = (workdir / "reports" / "reproduce-tiny1d.md").read_text()
    assert "| teacher |" in md and "| 94 % |" in md and "| 68 % |" in md
    with (workdir / "reports" / "reproduce-tiny1d.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["teacher", "student alone", "distilled"]
    assert [r["published"] for r in rows] == ["94.0", "68.0", ""]
    assert all(r["seeds"] == "2" for r in rows)
    # The parent run carries the table: the distilled row's mean is the mean of its two children's test accuracy (in %).
    parent_run = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(parent)
    distilled = [r.data.metrics["test_accuracy"] for r in _runs(workdir) if r.data.tags.get("role") == "distill"]
    assert parent_run.data.metrics["distill_mean"] == pytest.approx(100 * sum(distilled) / 2)
    assert parent_run.info.status == "FINISHED"


def test_bad_name_is_one_line_and_exit_2(workdir, capsys):
    assert main(["reproduce", "no-such-paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown setting 'no-such-paper'" in err and "mnist1d" in err
    assert not (workdir / "mlruns").exists()


def test_bad_seed_count_is_exit_2(workdir, capsys):
    assert main(["reproduce", "mnist1d", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_shipped_settings_parse():
    assert {"mnist1d", "hinton-mnist"} <= set(available_settings())
    cfg = load_setting("mnist1d")
    assert cfg.reproduce.unit == "accuracy" and cfg.reproduce.published.student == 68
    full = load_setting("mnist1d", full=True)
    assert full.train.epochs > cfg.train.epochs


def test_full_applies_the_setting_overrides_before_set(tiny):
    assert load_setting(str(tiny), full=True).train.epochs == 2
    assert load_setting(str(tiny), ["train.epochs=5"], full=True).train.epochs == 5
    with pytest.raises(ConfigError, match="unit"):
        load_setting(str(tiny), ["reproduce.unit=bits"])


def test_seeds_of_ensemble_members_never_collide(tiny):
    cfg = load_setting(str(tiny))
    # two teachers with seeds 0 and 1: seed s trains teachers 2s and 2s+1
    assert [t.seed for t in seeded(cfg, 0).teachers] == [0, 1]
    assert [t.seed for t in seeded(cfg, 2).teachers] == [4, 5]


def test_table_rows_mean_and_sample_sd_in_the_papers_unit(tiny):
    cfg: ReproduceConfig = load_setting(str(tiny), ["reproduce.unit=errors"])
    results = [RunResult(role, seed, None, {"test_errors": e, "test_accuracy": 1 - e / 10000})
               for role, errs in (("teacher", (60, 70, 80)), ("student", (140, 150, 160)), ("distill", (74, 74, 77)))
               for seed, e in enumerate(errs)]
    rows = {r["role"]: r for r in table_rows(Outcome(cfg, "tiny1d", "p", results))}
    assert (rows["teacher"]["mean"], rows["teacher"]["std"]) == pytest.approx((70.0, 10.0))
    assert (rows["student"]["mean"], rows["student"]["std"]) == pytest.approx((150.0, 10.0))
    assert (rows["distill"]["mean"], rows["distill"]["std"]) == pytest.approx((75.0, 3 ** 0.5))  # sd of 74, 74, 77
    assert rows["teacher"]["published"] == 94
