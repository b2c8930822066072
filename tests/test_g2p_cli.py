"""The CLI on grapheme-to-phoneme configs given what it cannot do or bad values: one line
on stderr, exit 2, and nothing started (no MLflow store, no data cache) -- the checks run
in config validation or the CLI's own checks, before any training or tracking."""

from pathlib import Path

import pytest

from research.cli import main

REPO = Path(__file__).resolve().parents[1]
G2P_DISTILL = REPO / "studies" / "g2p_distill.yaml"

# tests/test_seqkd.py's tiny run config (150 words, one epoch, d=32 and d=16 models)
TINY = """
name: g2p_cli
seed: 0
task: g2p
data: {{dataset: cmudict, val_fraction: 0.05, cache_dir: .cache, g2p: {{max_words: {words}}}}}
teachers:
  - model: {{name: transformer_seq2seq, args: {{src_vocab: 32, layers: 1, d_model: 32, heads: 2}}}}
    train: {{epochs: 1, batch_size: 64, lr: 0.003, threads: 1}}
student: {{name: transformer_seq2seq, args: {{src_vocab: 32, layers: 1, d_model: 16, heads: 2}}}}
train: {{epochs: 1, batch_size: 64, lr: 0.003, threads: 1}}
distill: {{temperature: 2, alpha: 1.0, sequence: {{targets: beam_top, beam: 2}}}}
eval: {{latency_repeats: 1, batch_size: 256}}
tracking: {{experiment: g2p_cli}}
"""

COMPARE = """
compare:
  budgets: [2]
  students: {2: {name: transformer_seq2seq, args: {src_vocab: 32, layers: 1, d_model: 16, heads: 2}}}
  methods:
    - {label: distill, kind: distill}
    - {label: int8, kind: compress, per_budget: false, compress: {method: quantize}}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def one_line_error(capsys, work: Path, *fragments: str) -> str:
    """stderr is one ``research: error:`` line holding every fragment; nothing was written in ``work``
    besides the config files (no ./mlruns store, so no MLflow run; no .cache)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("research: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    assert sorted(p.name for p in work.iterdir() if p.suffix != ".yaml") == []
    return lines[0]


# ---------------------------------------------------------------- compress / compare: classification only

REFUSED = "compress/compare support classification tasks only; task 'g2p'"


@pytest.mark.parametrize("section", ["", "compress: {method: prune, sparsity: 0.5}\n", "compress: {method: quantize}\n"])
def test_compress_refuses_a_sequence_config(section, work, capsys):
    (work / "g2p.yaml").write_text(TINY.format(words=150) + section)
    assert main(["compress", "g2p.yaml", "--no-progress"]) == 2
    one_line_error(capsys, work, REFUSED)


@pytest.mark.parametrize("section", ["", COMPARE])
def test_compare_refuses_a_sequence_config(section, work, capsys):
    (work / "g2p.yaml").write_text(TINY.format(words=150) + section)
    assert main(["compare", "g2p.yaml", "--no-progress", "--out", "rep"]) == 2
    one_line_error(capsys, work, REFUSED)


def test_compress_refuses_the_shipped_g2p_study_with_a_compress_override(work, capsys):
    assert main(["compress", str(G2P_DISTILL), "--set", "compress.method=prune", "--no-progress"]) == 2
    one_line_error(capsys, work, REFUSED)


def test_a_classification_compress_config_is_not_refused_by_the_task_check(work):
    from research.config import load_compare_config, load_run_config

    # the shipped classification comparison still loads (the check keys on the task only)
    assert load_compare_config(REPO / "studies" / "mnist1d_compare.yaml", check_files=False).task == "classification"
    (work / "c.yaml").write_text("data: {dataset: mnist1d}\nteachers: [{model: {name: mnist1d_cnn}}]\ncompress: {method: prune, sparsity: 0.5}\n")
    assert load_run_config(work / "c.yaml", check_files=False).compress.method == "prune"


# ---------------------------------------------------------------- research distill with bad values

@pytest.mark.parametrize(("override", "fragments"), [
    ("distill.sequence.targets=bogus", ["distill.sequence.targets:", "'reference', 'beam_top' or 'beam_closest'", "'bogus'"]),
    ("distill.sequence.beam=0", ["distill.sequence.beam:", "greater than or equal to 1", "(got 0)"]),
    ("distill.sequence.top_k=0", ["distill.sequence.top_k:", "greater than or equal to 1"]),
    ("distill.sequence.top_k=9", ["distill.sequence: top_k 9 exceeds beam 5"]),
    ("distill.sequence.length_penalty=-1", ["distill.sequence.length_penalty:", "greater than or equal to 0"]),
    ("data.g2p.max_words=0", ["data.g2p.max_words:", "greater than or equal to 3", "(got 0)"]),
    ("data.g2p.test_fraction=1.5", ["data.g2p.test_fraction:", "less than 1"]),
    ("data.g2p.stress=maybe", ["data.g2p.stress:", "'maybe'"]),
    # the two shares: once a traceback from the data loader after the MLflow store was made
    ("data.val_fraction=0.95", ["data: val_fraction and test_fraction must be in (0, 1) with a sum < 1, got 0.95, 0.1"]),
    ("task=classification", ["the g2p task goes with data.dataset cmudict"]),
])
def test_distill_bad_input_is_one_line_and_exit_2(override, fragments, work, capsys):
    assert main(["distill", str(G2P_DISTILL), "--set", override, "--no-progress"]) == 2
    one_line_error(capsys, work, str(G2P_DISTILL), *fragments)


def test_a_subsample_that_leaves_no_training_word_is_refused_up_front(work, capsys):
    # 4 words: round(0.6 * 4) = 2 test words and round(0.39 * 4) = 2 validation words, none left to train on
    args = ["--set", "data.g2p.max_words=4", "--set", "data.val_fraction=0.39", "--set", "data.g2p.test_fraction=0.6"]
    assert main(["distill", str(G2P_DISTILL), *args, "--no-progress"]) == 2
    one_line_error(capsys, work, "4 words leave no training word with val_fraction 0.39 and test_fraction 0.6")


def test_split_sizes_by_hand():
    from research.data.g2p import split_sizes

    assert split_sizes(3, 0.05, 0.1) == (1, 1, 1)        # each share rounds to 0, raised to one word
    assert split_sizes(200, 0.05, 0.1) == (170, 10, 20)
    assert split_sizes(10, 0.3, 0.2) == (5, 3, 2)
    with pytest.raises(ValueError, match="4 words leave no training word"):
        split_sizes(4, 0.39, 0.6)                       # 2 + 2 of 4
    with pytest.raises(ValueError, match="sum < 1"):
        split_sizes(1000, 0.5, 0.5)


def test_three_words_run_end_to_end(work, capsys):
    """The smallest subsample config allows (max_words 3: one word per split) runs: the
    student check once built its two-row example batch from data.train.y[:2], one row here,
    and the model call failed on the shape mismatch."""
    (work / "g2p.yaml").write_text(TINY.format(words=3))
    assert main(["distill", "g2p.yaml", "--no-progress"]) == 0
    assert "test WER" in capsys.readouterr().out


# ---------------------------------------------------------------- searched values no trial can use

SEARCH = """
search:
  temperature: {{low: 1.0, high: 4.0, log: true}}
  params:
    distill.sequence.targets: {{choices: [{targets}]}}
    distill.sequence.beam: {{choices: [{beams}]}}
    distill.sequence.top_k: {{choices: [1, 3]}}
sampler: {{name: random, seed: 0}}
n_trials: 4
"""


@pytest.mark.parametrize("targets, beams, fragments", [
    ("reference, bogus", "2, 5", ["search.params.distill.sequence.targets", "'bogus'"]),
    ("beam_top", "0, 5", ["search.params.distill.sequence.beam", "0"]),
])
def test_a_searched_value_no_trial_can_use_is_refused_before_the_study(targets, beams, fragments, work, capsys):
    """Each such trial used to fail with a traceback while `study run` ended 0."""
    (work / "s.yaml").write_text(TINY.format(words=150) + SEARCH.format(targets=targets, beams=beams))
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 2
    one_line_error(capsys, work, *fragments)


def test_a_value_valid_only_beside_another_searched_value_is_accepted(work):
    """top_k 3 needs a beam of at least 3: beam 5 is searched, so top_k 3 is usable (with beam 2 it
    is not: the check looks for one combination that works, not every one)."""
    from research.config import load_study_config
    from research.sweep import check_search_values

    (work / "s.yaml").write_text(TINY.format(words=150) + SEARCH.format(targets="reference, beam_top", beams="2, 5"))
    check_search_values(load_study_config("s.yaml"))  # no error
