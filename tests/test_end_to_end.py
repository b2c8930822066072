"""A short real distillation on MNIST-1D through the CLI, checked in the real MLflow store."""

import re
import shutil
import statistics

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from research.cli import main
from research.config import load_run_config
from research.data import load_data
from research.evaluate import classification_metrics, predict

from .conftest import SHARED_DATA

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
    with torch.no_grad():  # and counted here without research.evaluate: right answers over MNIST-1D's 1,000 test samples
        right = int((model.eval()(data.test.x).argmax(1) == data.test.y).sum())
    assert right / 1000 == pytest.approx(runs["distill"].data.metrics["test_accuracy"], abs=1e-6)
    assert 1000 - right == runs["distill"].data.metrics["test_errors"]


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


# ---------------------------------------------------------------- several seeds: the table

TINY = """
name: tiny
seed: 0
data: {dataset: mnist1d, cache_dir: .cache}
teachers:
  - model: {name: mlp, args: {widths: [32]}}
    train: {epochs: 1, threads: 1}
student: {name: mlp, args: {widths: [16]}}
train: {epochs: 1, threads: 1}
baseline_train: {epochs: 2, threads: 1}
baseline: true
eval: {latency_repeats: 1}
tracking: {experiment: tiny, log_model: false}
"""


def _finished(work, experiment: str, role: str) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], f"tags.role = '{role}'")
    assert all(r.info.status == "FINISHED" for r in found)
    return found


def test_seeds_table_is_mean_and_std_of_the_logged_runs(workdir, mnist1d_arrays, capsys):
    shutil.copytree(mnist1d_arrays, workdir / ".cache")
    (workdir / "tiny.yaml").write_text(TINY)
    assert main(["distill", "tiny.yaml", "--no-progress", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    # the table's columns are separated by two or more spaces; a cell such as "61.30 ± 1.27 %" has single ones
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()) if cells[0] in ("student", "distill")}
    assert set(rows) == {"student", "distill"}, out
    for role in ("student", "distill"):
        found = _finished(workdir, "tiny", role)
        assert sorted(r.data.tags["seed"] for r in found) == ["0", "1"]
        acc = [r.data.metrics["test_accuracy"] for r in found]
        errors = [r.data.metrics["test_errors"] for r in found]
        assert errors == [round((1 - a) * 1000) for a in acc]  # MNIST-1D has 1,000 test samples
        assert statistics.stdev(acc) > 0  # seeds 0 and 1 train different students, so the std is not trivially 0
        cells = rows[role]
        assert cells[1] == "2", cells  # runs
        assert cells[2] == f"{100 * statistics.mean(acc):.2f} ± {100 * statistics.stdev(acc):.2f} %", (cells, acc)
        assert cells[3] == f"{statistics.mean(errors):.1f} ± {statistics.stdev(errors):.1f}", (cells, errors)


# ---------------------------------------------------------------- teacher logits under augmentation

AUGMENTED = """
name: aug
seed: 0
# real MNIST images, cut to 4,000 + 1,000 by the test (mnist_subset): 3,000 train, 1,000 validate
data: {{dataset: mnist, root: {root}, cache_dir: .cache, val_fraction: 0.25, augment: true}}
teachers:
  - model: {{name: mlp, args: {{widths: [32]}}}}
    augment: true     # the teacher's own training is jittered whatever data.augment says: one teacher for both runs
    train: {{epochs: 1, batch_size: 50, threads: 1}}
student: {{name: mnist_cnn_student, args: {{c1: 2, c2: 4}}}}
train: {{epochs: 1, batch_size: 50, threads: 1}}
baseline: false
eval: {{latency_repeats: 1}}
tracking: {{experiment: aug, log_model: false}}
"""
TRAIN, VAL, TEST = 3000, 1000, 1000  # 4,000 * 0.75, 4,000 * 0.25, the test subset
BATCH = 50


@pytest.fixture(scope="module")
def mnist_images():
    """The first 4,000 training and 1,000 test images of the real MNIST (loading all 70,000 and
    evaluating on them would take most of a minute here)."""
    from research.data.vision import load_vision

    x, y, x_test, y_test = load_vision("mnist", SHARED_DATA, False)
    return x[:4000].clone(), y[:4000].clone(), x_test[:1000].clone(), y_test[:1000].clone()


@pytest.fixture
def mnist_subset(mnist_images, monkeypatch):
    """research.data.load_data reads these images instead of the whole set; everything else
    (normalisation, validation split, the jitter augmentation) is the real path."""
    import research.data

    monkeypatch.setattr(research.data, "load_vision", lambda name, root, download: mnist_images)


class ForwardLog:
    """Every forward pass of the teacher (an MLP) and the student (an MNIST CNN), by a global hook."""

    def __init__(self) -> None:
        from research.models.cnn import MNISTCNN
        from research.models.mlp import MLP

        self.teacher: list[torch.Tensor] = []
        self.student: list[torch.Tensor] = []
        self._types = (MLP, MNISTCNN)

    def __enter__(self):
        def hook(module, args, output):
            if len(args[0]) == 2:  # the output check before training (research.pipeline._example_batch): no data rows
                return
            if isinstance(module, self._types[0]):
                self.teacher.append(args[0].detach().clone())
            elif isinstance(module, self._types[1]) and len(args[0]) == BATCH:  # training steps only
                self.student.append(args[0].detach().clone())

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def teacher_batches(self) -> list[torch.Tensor]:
        """The teacher's calls on training batches (evaluation and the cache use batches of 1,024)."""
        return [x for x in self.teacher if len(x) == BATCH]

    def teacher_rows(self) -> int:
        return sum(len(x) for x in self.teacher)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_teacher_logit_cache_is_bypassed_under_augmentation(workdir, mnist_subset):
    (workdir / "aug.yaml").write_text(AUGMENTED.format(root=SHARED_DATA))
    logits_dir = workdir / ".cache" / "teacher_logits"
    assert main(["train-teacher", "aug.yaml", "--no-progress"]) == 0

    with ForwardLog() as augmented:
        assert main(["distill", "aug.yaml", "--no-progress"]) == 0
    # The teacher sees every augmented training batch, the very batch the student sees ...
    assert len(augmented.teacher_batches()) == TRAIN // BATCH == len(augmented.student) == 60
    assert all(torch.equal(t, s) for t, s in zip(augmented.teacher_batches(), augmented.student))
    # ... once per batch, besides evaluating on val and test: no pass over the training split for a cache,
    assert augmented.teacher_rows() == TRAIN + VAL + TEST
    # and nothing is cached.
    assert not logits_dir.exists() or list(logits_dir.iterdir()) == []

    with ForwardLog() as plain:
        assert main(["distill", "aug.yaml", "--no-progress", "--set", "data.augment=false"]) == 0
    assert len(_finished(workdir, "aug", "teacher")) == 1  # the same teacher both times
    # Without augmentation the teacher runs once over the training split (into the cache), never per batch:
    assert plain.teacher_batches() == [] and len(plain.student) == 60
    assert plain.teacher_rows() == TRAIN + VAL + TEST
    assert len(list(logits_dir.glob("*.pt"))) == 1
    train_rows = _rows(torch.cat(plain.teacher[: -(-TRAIN // 1024)]))  # the cache's pass: 3 batches of up to 1,024 = the training split
    assert len(train_rows) == TRAIN
    assert all(_rows(s) <= train_rows for s in plain.student)  # the student saw raw training images ...
    seen = torch.cat(augmented.teacher_batches())
    unchanged = sum(r in train_rows for r in _rows(seen))
    assert unchanged < 0.2 * TRAIN, unchanged  # ... the teacher under augmentation mostly jittered ones (1 in 25 unshifted)

    with ForwardLog() as again:
        assert main(["distill", "aug.yaml", "--no-progress", "--set", "data.augment=false"]) == 0
    assert again.teacher_batches() == [] and again.teacher_rows() == VAL + TEST  # the cached logits were read from disk
    assert len(list(logits_dir.glob("*.pt"))) == 1
