"""A short real distillation on MNIST-1D through the CLI, checked in the real MLflow store."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from research.cli import main
from research.config import load_run_config
from research.data import load_data
from research.evaluate import classification_metrics, predict

CONFIG = """
name: e2e
seed: 0
data: {dataset: mnist1d, cache_dir: .cache, transfer_size: 10000, transfer_seed: 7}
teachers:
  - model: {name: mnist1d_cnn}
    train: {epochs: 40, batch_size: 100, lr: 0.01}
student: {name: mnist1d_mlp}
train: {epochs: 10, batch_size: 100, lr: 0.01}
baseline_train: {epochs: 40, batch_size: 100, lr: 0.01}
distill: {temperature: 4, alpha: 0.1}
eval: {latency_repeats: 3}
tracking: {experiment: e2e}
"""


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    (work / "e2e.yaml").write_text(CONFIG)
    code = main(["distill", "e2e.yaml", "--no-progress"])
    yield work, code
    mp.undo()


def _runs(work):
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    return client, exp, {r.data.tags["role"]: r for r in runs}


def test_distilled_student_beats_student_alone(e2e_run):
    work, code = e2e_run
    assert code == 0
    _, _, runs = _runs(work)
    alone, distilled = runs["student"].data.metrics, runs["distill"].data.metrics
    # both get about the same number of optimizer steps (alone 40 x 36 = 1,440; distilled 10 x 136 = 1,360)
    assert distilled["test_accuracy"] > alone["test_accuracy"] + 0.03, (distilled["test_accuracy"], alone["test_accuracy"])


def test_runs_are_tracked_with_params_metrics_tags_and_artifacts(e2e_run):
    work, _ = e2e_run
    client, exp, runs = _runs(work)
    assert set(runs) == {"teacher", "student", "distill"}
    assert exp.artifact_location.startswith((work / "mlruns" / "artifacts").as_uri())
    teacher_id = runs["teacher"].info.run_id
    for role, run in runs.items():
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["dataset"] == "mnist1d" and tags["method"] in ("teacher", "student", "distill")
        assert len(tags["mlflow.source.git.commit"]) == 40  # the checkout's commit
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = [m.step for m in history]  # per epoch, plus the final evaluation at the last step
        assert sorted(set(steps)) == list(range(1, max(steps) + 1)) and max(steps) >= 10
        for m in ("test_accuracy", "test_nll", "test_ece", "params", "size_bytes", "latency_b1_ms", "latency_b256_ms", "flops"):
            assert m in run.data.metrics, (role, m)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config", "model"} <= artifacts
    assert runs["distill"].data.tags["teacher_run_id"] == teacher_id
    assert runs["distill"].data.params["distill.temperature"] == "4.0"
    assert runs["distill"].data.params["data.transfer_size"] == "10000"
    assert runs["student"].data.params["train.epochs"] == "40"  # the baseline's own budget
    assert "test_agreement" in runs["distill"].data.metrics and "test_kl_to_teacher" in runs["distill"].data.metrics
    config_files = {a.path for a in client.list_artifacts(runs["distill"].info.run_id, "config")}
    assert {"config/e2e.yaml", "config/resolved.yaml"} <= config_files


def test_logged_model_reloads_to_the_same_accuracy(e2e_run):
    work, _ = e2e_run
    _, _, runs = _runs(work)
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{runs['distill'].info.run_id}/model")
    data = load_data("mnist1d", cache_dir=work / ".cache")
    acc = classification_metrics(predict(model, data.test.x), data.test.y)["accuracy"]
    assert acc == runs["distill"].data.metrics["test_accuracy"]


def test_second_run_reuses_the_teacher(e2e_run, monkeypatch):
    work, _ = e2e_run
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["distill", "e2e.yaml", "--no-progress", "--set", "baseline=false", "--set", "tracking.log_model=false"]) == 0
    client, exp, _ = _runs(work)
    teachers = client.search_runs([exp.experiment_id], "tags.role = 'teacher'")
    assert len(teachers) == 1
    distills = client.search_runs([exp.experiment_id], "tags.role = 'distill'")
    assert len(distills) == 2 and len({r.data.tags["teacher_run_id"] for r in distills}) == 1
    # and the cached teacher logits were reused, not recomputed: one entry on disk
    assert len(list((work / ".cache" / "teacher_logits").glob("*.pt"))) == 1


def test_honours_mlflow_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "c.yaml").write_text(CONFIG.replace("transfer_size: 10000", "transfer_size: 0").replace("epochs: 40", "epochs: 1"))
    cfg = load_run_config(tmp_path / "c.yaml")
    assert main(["train-teacher", "c.yaml", "--no-progress", "--set", "tracking.log_model=false"]) == 0
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "mlruns" / "mlflow.db").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["role"] == "teacher"
