"""A grapheme-to-phoneme study on the one engine (issue 10, section 4): a tiny version
of studies/g2p_kd.yaml through ``research study run``, ``study finalize`` and ``study
report`` with the real stores (Optuna journal file, MLflow SQLite), read back without
going through research.sweep."""

import contextlib
import io
import statistics

import pytest
from optuna.trial import TrialState

from research.cli import main

from .study_support import blank_db, chdir_to, client_for, keep_torch_threads, load, trial_runs  # noqa: F401

# studies/g2p_kd.yaml shrunk: 150 words, one epoch, a 1-layer d=32 teacher and a
# d=16 student; the method (targets), beam, T and alpha searched as there. Trial 0 is
# the enqueued default (sequence-level KD), so finalize has a paired comparison.
G2P_STUDY = """
name: {name}
seed: 0
task: g2p
data: {{dataset: cmudict, val_fraction: 0.1, split_seed: 0, cache_dir: {cache}, g2p: {{max_words: 150, stress: false, test_fraction: 0.1}}}}
teachers:
  - model: {{name: transformer_seq2seq, args: {{src_vocab: 32, layers: 1, d_model: 32, heads: 2}}}}
    seed: 0
    train: {{epochs: 1, batch_size: 64, lr: 0.003, threads: 1}}
student: {{name: transformer_seq2seq, args: {{src_vocab: 32, layers: 1, d_model: 16, heads: 2}}}}
train: {{epochs: 1, batch_size: 64, lr: 0.003, threads: 1}}
distill:
  temperature: 2.0
  alpha: 1.0
  sequence: {{targets: beam_top, beam: 2, length_penalty: 1.0, top_k: 1}}
eval: {{batch_size: 256, latency_repeats: 1}}
search:
  temperature: {{low: 1.0, high: 8.0, log: true}}
  alpha: {{low: 0.0, high: 1.0}}
  params:
    distill.sequence.targets: {{choices: [reference, beam_top, beam_closest]}}
    distill.sequence.beam: {{choices: [1, 2]}}
enqueue:
  - {{distill.sequence.targets: beam_top, distill.sequence.beam: 2, temperature: 2.0, alpha: 1.0}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
objectives: [{{metric: val_wer, direction: minimize}}]
n_trials: 3
keep_models: 1
"""

SEARCHED = {"temperature", "alpha", "distill.sequence.targets", "distill.sequence.beam"}


@pytest.fixture(scope="module")
def g2p_study(tmp_path_factory, blank_db):  # noqa: F811
    """The tiny G2P study run, finalized with 2 seeds and reported; tests only read it."""
    work = tmp_path_factory.mktemp("g2p_study")
    mp = pytest.MonkeyPatch()
    chdir_to(mp, work, blank_db)
    path = work / "g2p_tiny.yaml"
    path.write_text(G2P_STUDY.format(name="g2p_tiny", cache=work / "cache"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes = {
            "run": main(["study", "run", str(path), "--no-progress"]),
            "finalize": main(["study", "finalize", "g2p_tiny", "--seeds", "2", "--no-progress"]),
            "report": main(["study", "report", "g2p_tiny", "--out", str(work / "rep")]),
        }
    yield work, codes, out.getvalue()
    mp.undo()


def test_trials_complete_on_validation_wer(g2p_study):
    work, codes, _ = g2p_study
    assert codes["run"] == 0
    study = load(work, "g2p_tiny")
    assert [d.name for d in study.directions] == ["MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert set(t.params) == SEARCHED
        assert t.params["distill.sequence.targets"] in {"reference", "beam_top", "beam_closest"}
        assert t.params["distill.sequence.beam"] in {1, 2}
        assert 1.0 <= t.params["temperature"] <= 8.0 and 0.0 <= t.params["alpha"] <= 1.0
        assert 0.0 <= t.value <= 1.0  # a word error rate
    assert trials[0].params == {"distill.sequence.targets": "beam_top", "distill.sequence.beam": 2, "temperature": 2.0, "alpha": 1.0}


def test_each_trial_has_its_child_run_with_wer_and_per(g2p_study):
    work, _, _ = g2p_study
    study = load(work, "g2p_tiny")
    runs = {int(r.data.tags["trial_number"]): r for r in trial_runs(client_for(work), "g2p_tiny")}
    assert sorted(runs) == [t.number for t in study.get_trials()]
    for t in study.get_trials():
        m, p = runs[t.number].data.metrics, runs[t.number].data.params
        # the objective Optuna got is the child run's own validation WER
        assert m["val_wer"] == pytest.approx(t.value)
        assert 0.0 <= m["test_wer"] <= 1.0 and m["val_per"] >= 0.0 and m["test_per"] >= 0.0
        assert "val_accuracy" not in m and "test_accuracy" not in m
        # the searched values reached the run's configuration
        assert p["distill.sequence.targets"] == t.params["distill.sequence.targets"]
        assert int(p["distill.sequence.beam"]) == t.params["distill.sequence.beam"]
        assert float(p["distill.temperature"]) == pytest.approx(t.params["temperature"])
        assert float(p["distill.alpha"]) == pytest.approx(t.params["alpha"])


def test_finalize_logs_test_wer_and_the_paired_sentence(g2p_study):
    work, codes, stdout = g2p_study
    assert codes["finalize"] == 0
    study = load(work, "g2p_tiny")
    best = min(study.get_trials(), key=lambda t: (t.value, t.number))
    client = client_for(work)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    finals = client.search_runs([parent.info.experiment_id], "tags.role = 'final_best'")
    assert len(finals) == 2 and sorted(r.data.params["seed"] for r in finals) == ["0", "1"]
    wers = [r.data.metrics["test_wer"] for r in finals]
    assert parent.data.metrics["final_best_test_wer_mean"] == pytest.approx(statistics.fmean(wers))
    assert parent.data.metrics["final_best_test_wer_std"] == pytest.approx(statistics.stdev(wers))
    assert "final_best_test_accuracy_mean" not in parent.data.metrics
    assert "test wer" in stdout.lower()
    if best.number == 0:
        assert parent.data.metrics["final_paired_default_is_best"] == 1.0
        assert "the best trial is the enqueued default itself" in stdout
    else:
        defaults = client.search_runs([parent.info.experiment_id], "tags.role = 'final_default'")
        assert len(defaults) == 2
        assert parent.data.metrics["final_paired_seeds"] == 2
        # best - default per seed, WER: lower is better
        by_seed = {r.data.params["seed"]: r.data.metrics["test_wer"] for r in defaults}
        diffs = [r.data.metrics["test_wer"] - by_seed[r.data.params["seed"]] for r in finals]
        assert parent.data.metrics["final_paired_diff_mean"] == pytest.approx(statistics.fmean(diffs))
        assert "paired" in stdout.lower() or "seeds" in stdout.lower()


def test_report_exists(g2p_study):
    work, codes, _ = g2p_study
    assert codes["report"] == 0
    md = (work / "rep" / "report.md").read_text()
    assert "# Study `g2p_tiny`" in md and "Best trial against the enqueued defaults" in md
    # the finalized section names the task's test metric (it once read test_accuracy only, so
    # a g2p study's report had no finalized section at all)
    section = md.split("## Finalized on the whole training split", 1)[1].split("##", 1)[0]
    assert "test wer" in section and "test accuracy" not in md
    parent = client_for(work).get_run(load(work, "g2p_tiny").user_attrs["mlflow_parent_run_id"])
    mean, std = parent.data.metrics["final_best_test_wer_mean"], parent.data.metrics["final_best_test_wer_std"]
    assert f"{100 * mean:.1f}" in section and f"{100 * std:.1f}" in section
    assert "Paired over seeds, test wer:" in md
    assert (work / "rep" / "finalized_test_wer.png").stat().st_size > 1000
