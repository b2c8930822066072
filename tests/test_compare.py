"""Compression baselines through the CLI: single runs, a comparison, a study over their knobs."""

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from research.adaptive import load_adaptive_config
from research.cli import main
from research.compare import run_config_for
from research.config import ConfigError, MethodConfig, load_compare_config, load_run_config, load_study_config
from research.data import load_data
from research.evaluate import classification_metrics, predict
from research.pipeline import method_label

from .conftest import REPO

BASE = """
name: {name}
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn}}
    train: {{epochs: 15, threads: 1}}
train: {{epochs: 3, threads: 1}}
eval: {{latency_repeats: 2}}
tracking: {{experiment: {name}}}
"""


@pytest.fixture
def work(workdir):
    return workdir  # conftest: a fresh cwd with the default ./mlruns store


def client(work):
    return MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")


def test_compress_run_is_tracked_and_reloads_to_the_same_accuracy(work):
    text = BASE.format(name="cmp1", cache=work / ".cache") + "compress: {method: prune, sparsity: 0.8, finetune_epochs: 2}\n"
    (work / "c.yaml").write_text(text)
    assert main(["compress", "c.yaml", "--no-progress"]) == 0
    c = client(work)
    exp = c.get_experiment_by_name("cmp1")
    (run,) = c.search_runs([exp.experiment_id], "tags.role = 'compress'")
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "prune"
    m = run.data.metrics
    teacher = c.search_runs([exp.experiment_id], "tags.role = 'teacher'")[0]
    assert m["params_nonzero"] == round(0.2 * 5125) + 85  # 80% of the CNN's 5,125 weights zeroed; its 85 biases stay
    assert m["size_bytes"] < teacher.data.metrics["size_bytes"]  # stored compactly
    assert {"deployable", "model"} <= {a.path for a in c.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    data = load_data("mnist1d", cache_dir=work / ".cache")
    assert classification_metrics(predict(model, data.test.x), data.test.y)["accuracy"] == m["test_accuracy"]


def test_executorch_int8_run_is_tracked_with_its_pte_file(work, tmp_path):
    text = BASE.format(name="et", cache=work / ".cache") + "compress: {method: executorch, quantize: true, calibration_samples: 128}\n"
    (work / "c.yaml").write_text(text)
    assert main(["compress", "c.yaml", "--no-progress"]) == 0
    c = client(work)
    exp = c.get_experiment_by_name("et")
    (run,) = c.search_runs([exp.experiment_id], "tags.role = 'compress'")
    (teacher,) = c.search_runs([exp.experiment_id], "tags.role = 'teacher'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "executorch_int8" and run.data.tags["format"] == "pte"
    assert run.data.tags["compress.backend"] == "xnnpack" and run.data.tags["compress.dtype"] == "int8"
    m = run.data.metrics
    assert m["params"] == teacher.data.metrics["params"] == 5210  # the float CNN that was converted
    assert abs(m["test_accuracy"] - teacher.data.metrics["test_accuracy"]) <= 0.03
    assert m["latency_b1_ms"] > 0 and m["latency_b256_ms"] > 0 and m["latency_threads"] == 1
    (pte,) = [a for a in c.list_artifacts(run.info.run_id, "deployable")]
    assert pte.path == "deployable/model.pte" and pte.file_size == m["size_bytes"] < teacher.data.metrics["size_bytes"]
    local = c.download_artifacts(run.info.run_id, pte.path, str(tmp_path))
    from research.compress.methods.executorch_pte import PTE_FILE

    data = load_data("mnist1d", cache_dir=work / ".cache")
    reloaded = PTE_FILE.load(local)
    assert classification_metrics(predict(reloaded, data.test.x), data.test.y)["accuracy"] == m["test_accuracy"]


def test_compress_without_section_is_bad_input(work, capsys):
    (work / "c.yaml").write_text(BASE.format(name="x", cache=".cache"))
    assert main(["compress", "c.yaml"]) == 2
    assert "compress: this command needs a compress: section" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["c.yaml"]


def test_comparison_runs_every_method_budget_and_seed(work):
    text = BASE.format(name="cmp2", cache=work / ".cache") + """
compare:
  budgets: [2, 4]
  students:
    2: {name: mnist1d_cnn, args: {channels: 16}}
    4: {name: mnist1d_cnn, args: {channels: 11}}
  seeds: [0, 1]
  methods:
    - {label: distill, kind: distill}
    - {label: prune_structured, kind: compress, compress: {method: prune, structured: true, finetune_epochs: 1}}
    - {label: int8, kind: compress, per_budget: false, compress: {method: quantize}}
"""
    (work / "cmp.yaml").write_text(text)
    assert main(["compare", "cmp.yaml", "--no-progress", "--out", "rep"]) == 0
    c = client(work)
    exp = c.get_experiment_by_name("cmp2")
    (parent,) = c.search_runs([exp.experiment_id], "tags.role = 'comparison'")
    assert parent.info.status == "FINISHED"
    runs = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    keys = sorted((r.data.tags["method"], r.data.tags.get("budget"), r.data.tags["seed"]) for r in runs)
    assert keys == sorted([(m, b, s) for m in ("distill", "prune_structured") for b in ("2.0", "4.0") for s in ("0", "1")]
                          + [("int8", None, s) for s in ("0", "1")])
    by = {(r.data.tags["method"], r.data.tags.get("budget")): r.data.metrics for r in runs}
    assert by[("prune_structured", "4.0")]["params"] < by[("prune_structured", "2.0")]["params"] < 5210
    # each budget met from below: the teacher CNN's 5,210 parameters / 2 = 2,605 and / 4 = 1,302.5
    assert by[("prune_structured", "2.0")]["params"] <= 2605 and by[("prune_structured", "4.0")]["params"] <= 1302.5
    # the budget students: mnist1d_cnn with 16 channels, 1*16*5+16 + 2*(16*16*3+16) + (16*5)*10+10 = 96 + 1,568 + 810 = 2,474
    # parameters; with 11: 66 + 2*(11*11*3+11) + 55*10+10 = 66 + 748 + 560 = 1,374
    assert by[("distill", "2.0")]["params"] == 2474 and by[("distill", "4.0")]["params"] == 1374
    assert by[("int8", None)]["size_bytes"] < 0.75 * by[("prune_structured", "2.0")]["size_bytes"] * 2
    md = (work / "rep" / "comparison.md").read_text()
    assert "| distill | 2x |" in md and "| int8 | - |" in md and "teacher" in md
    # the 4x student's 1,374 parameters are more than 5,210 / 4 = 1,302.5: labelled, 5,210 / 1,374 = 3.79x
    assert "| distill | 4x (over: 3.8x) |" in md
    # payloads: the 2x student in float32, 2,474 x 4 bytes; int8 well under the float teacher's 5,210 x 4
    assert by[("distill", "2.0")]["payload_bytes"] == 2474 * 4
    assert by[("int8", None)]["payload_bytes"] < 0.5 * 5210 * 4
    for png in ("pareto_accuracy_vs_size.png", "pareto_accuracy_vs_latency.png"):
        assert (work / "rep" / png).stat().st_size > 5000


def test_a_study_searches_compression_knobs(work):
    text = BASE.format(name="cmp3", cache=work / ".cache").replace("tracking: {experiment: cmp3}\n", "") + """
compress: {method: prune, finetune_epochs: 1}
search:
  temperature: null
  alpha: null
  params:
    compress.sparsity: {low: 0.3, high: 0.95}
objectives: [{metric: val_accuracy, direction: maximize}, {metric: size_bytes, direction: minimize}]
sampler: {name: nsga2, seed: 0}
pruner: {name: none}
n_trials: 3
keep_models: 0
"""
    (work / "s.yaml").write_text(text)
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))
    study = optuna.load_study(study_name="cmp3", storage=storage)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    c = client(work)
    for t in study.trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["method"] == "prune"
        assert float(run.data.params["compress.sparsity"]) == pytest.approx(t.params["compress.sparsity"])
        assert run.data.metrics["size_bytes"] == pytest.approx(t.values[1])


# ---------------------------------------------------------------- configs: files, labels, budgets, search keys

STUDIES = sorted((REPO / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_study_file_loads(path):
    text = path.read_text()
    if "\ncompare:" in text:
        cfg = load_compare_config(path, check_files=False)
        assert all(m.compress is None or isinstance(m.compress, MethodConfig) for m in cfg.compare.methods)
    elif "\nsearch:" in text or "\nn_trials:" in text:
        load_study_config(path, check_files=False)
    elif "\nadaptive:" in text:  # research.adaptive's comparison file
        load_adaptive_config(path, check_files=False)
    else:
        load_run_config(path, check_files=False)


def test_comparison_labels_and_budget_knobs_come_from_the_methods():
    cfg = load_compare_config(REPO / "studies" / "mnist1d_compare.yaml", check_files=False)
    at4 = {m.label: run_config_for(cfg, m, None if not m.per_budget else 4.0) for m in cfg.compare.methods}
    # a compression run's method tag: the names runs had before the methods became classes, and the new ones
    assert {label: method_label(c) for label, c in at4.items() if c.compress is not None} == {
        "transfer": "transfer", "prune": "prune", "prune_iterative": "prune_iterative",
        "prune_structured": "prune_structured", "lowrank": "lowrank", "int8": "int8_onnxruntime", "executorch": "executorch",
        "executorch_int8": "executorch_int8", "distill+int8": "distill+int8_onnxruntime", "distill+prune": "distill+prune",
    }
    knobs = {label: c.compress.model_dump() for label, c in at4.items() if c.compress is not None}
    for label in ("prune", "prune_iterative", "prune_structured"):
        assert knobs[label]["sparsity"] == 0.75  # 4x fewer parameters: 1 - 1/4 of them removed
    assert knobs["lowrank"]["param_fraction"] == 0.25 and knobs["lowrank"]["rank"] is None
    assert knobs["distill+prune"]["sparsity"] == 0.5  # budget_knobs: false keeps the file's sparsity
    assert knobs["transfer"]["finetune_epochs"] == 30 and knobs["int8"]["backend"] == "onnxruntime"
    assert type(at4["prune_structured"].compress).__name__ == "StructuredPruneConfig"


STUDY = """
name: knobs
data: {dataset: mnist1d}
teachers: [{model: {name: mnist1d_mlp}}]
compress: {method: prune, finetune_epochs: 1}
search:
  temperature: null
  alpha: null
  params: {PARAMS}
"""


def test_a_study_over_compression_knobs_validates_them(tmp_path):
    from research.sweep import trial_config

    path = tmp_path / "s.yaml"
    path.write_text(STUDY.replace("{PARAMS}", "{compress.sparsity: {low: 0.3, high: 0.9}, compress.structured: {choices: [true, false]}}"))
    cfg = load_study_config(path, check_files=False)
    trial = trial_config(cfg, {"compress.sparsity": 0.6, "compress.structured": True})
    assert type(trial.compress).__name__ == "StructuredPruneConfig" and trial.compress.sparsity == 0.6
    assert method_label(trial) == "prune_structured"
    assert type(trial_config(cfg, {"compress.sparsity": 0.6, "compress.structured": False}).compress).__name__ == "PruneConfig"
    path.write_text(STUDY.replace("{PARAMS}", "{compress.rank: {int_low: 1, int_high: 8}}"))
    with pytest.raises(ConfigError, match=r"search\.params\.compress\.rank: not a searchable config key"):
        load_study_config(path, check_files=False)


def test_a_knob_of_another_method_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(name="x", cache=".cache") + "compress: {method: prune, sparsity: 0.9}\n")
    assert type(load_run_config(path, check_files=False).compress).__name__ == "PruneConfig"
    for override, expected in [
        ("compress.rank=3", "compress.rank: unknown key for method prune; allowed: "),
        ("compress.method=pruning", "compress.method: unknown compression method 'pruning'; choose one of "),
        ("compress.sparsity=1.5", "compress.sparsity: Input should be less than 1 (got 1.5)"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_run_config(path, [override], check_files=False)
        assert str(e.value).startswith(f"{path}: {expected}") and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="compress_source: teacher cannot be used with compress.method transfer; use student"):
        load_run_config(path, ["compress={method: transfer}"], check_files=False)
