"""Which teacher a run uses, checked in the real MLflow store: trained once and reused while its
config is the same, retrained when its config (seed, epochs) changes, taken as it is from a
``model_uri``."""

from __future__ import annotations

import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from research.cli import main
from research.data import load_data
from research.tracking import Tracker

CONFIG = """
name: tt
seed: 0
data: {dataset: mnist1d, cache_dir: .cache}
teachers:
  - model: {name: mlp, args: {widths: [32]}}
    train: {epochs: 1, threads: 1}
student: {name: mlp, args: {widths: [16]}}
train: {epochs: 1, threads: 1}
baseline: false
eval: {latency_repeats: 1}
tracking: {experiment: tt, log_model: false}
"""


@pytest.fixture
def work(workdir, mnist1d_arrays):
    shutil.copytree(mnist1d_arrays, workdir / ".cache")
    (workdir / "c.yaml").write_text(CONFIG)
    return workdir


def distill(*overrides: str, config: str = "c.yaml") -> None:
    argv = ["distill", config, "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 0


def runs(work, role: str) -> list:
    """Finished runs of ``role`` in the experiment, oldest first."""
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tt")
    found = client.search_runs([exp.experiment_id], f"tags.role = '{role}'", order_by=["attributes.start_time ASC"])
    assert all(r.info.status == "FINISHED" for r in found)
    return found


def last_teacher_id(work) -> str:
    return runs(work, "distill")[-1].data.tags["teacher_run_id"]


def teacher_weights(work, run_id: str) -> dict[str, torch.Tensor]:
    return Tracker(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}").load_model(f"runs:/{run_id}/model").state_dict()


def test_set_teacher_seed_trains_a_new_teacher(work):
    distill()
    (first,) = runs(work, "teacher")
    distill("teachers.0.seed=2")
    teachers = runs(work, "teacher")
    assert len(teachers) == 2
    new = teachers[1]
    assert new.data.tags["seed"] == "2" and new.data.params["teacher.seed"] == "2"
    assert new.data.tags["teacher_key"] != first.data.tags["teacher_key"]
    assert last_teacher_id(work) == new.info.run_id  # the distilled student learned from the new teacher
    a, b = teacher_weights(work, first.info.run_id), teacher_weights(work, new.info.run_id)
    assert not torch.equal(a["net.1.weight"], b["net.1.weight"])  # other initial weights, so another teacher


def test_teacher_is_retrained_when_its_config_changes_and_reused_when_not(work):
    distill()
    (one_epoch,) = runs(work, "teacher")
    distill("distill.temperature=8", "train.epochs=2")  # the student's settings: the same teacher
    assert [t.info.run_id for t in runs(work, "teacher")] == [one_epoch.info.run_id]
    assert last_teacher_id(work) == one_epoch.info.run_id

    distill("teachers.0.train.epochs=2")  # the teacher's own training: a new teacher
    teachers = runs(work, "teacher")
    assert len(teachers) == 2
    two_epochs = teachers[1]
    assert two_epochs.data.params["teacher.train.epochs"] == "2"
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    # it really trained two epochs: one validation point per epoch (steps 1 and 2)
    assert sorted({m.step for m in client.get_metric_history(two_epochs.info.run_id, "val_accuracy")}) == [1, 2]
    assert last_teacher_id(work) == two_epochs.info.run_id

    distill("teachers.0.train.epochs=2")  # the same changed config again: reused, not retrained
    assert len(runs(work, "teacher")) == 2
    assert last_teacher_id(work) == two_epochs.info.run_id
    assert len(runs(work, "distill")) == 4


def test_teacher_from_model_uri_is_used_and_not_retrained(work, capsys):
    assert main(["train-teacher", "c.yaml", "--no-progress"]) == 0
    (teacher,) = runs(work, "teacher")
    tid = teacher.info.run_id
    assert f"runs:/{tid}/model" in capsys.readouterr().out  # train-teacher prints the URI to use
    (work / "uri.yaml").write_text(
        CONFIG.replace("  - model: {name: mlp, args: {widths: [32]}}\n    train: {epochs: 1, threads: 1}\n",
                       f"  - model_uri: runs:/{tid}/model\n").replace("log_model: false", "log_model: true")
    )
    distill(config="uri.yaml")
    assert [t.info.run_id for t in runs(work, "teacher")] == [tid]  # no new teacher run
    (run,) = runs(work, "distill")
    assert run.data.tags["teacher_run_id"] == tid
    # The run's agreement with the teacher is that of the logged teacher, computed here by hand.
    tracker = Tracker(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    teacher_model = tracker.load_model(f"runs:/{tid}/model").eval()
    student = tracker.load_model(f"runs:/{run.info.run_id}/model").eval()
    x = load_data("mnist1d", cache_dir=work / ".cache").test.x
    with torch.no_grad():
        agreement = (student(x).argmax(1) == teacher_model(x).argmax(1)).float().mean().item()
    assert run.data.metrics["test_agreement"] == pytest.approx(agreement, abs=1e-6)
    assert 0.0 < agreement < 1.0  # an untrained-looking or copied teacher would make this check empty
