"""The g2p task on the one engine: word-level KD through the registered objective with padding
masked, sequence-level KD / seq-inter targets from the teacher's cached beam search, and every
method trained by ``research.train.fit`` on a few hundred CMUdict words."""

from __future__ import annotations

import math

import pytest
import torch

from research.config import DistillConfig, TrainConfig
from research.data import Split
from research.data.g2p import EOS, PAD, load_g2p
from research.decoding import beam_search
from research.distill import Distiller
from research.distill.seqkd import (
    METHODS,
    BeamSettings,
    NBest,
    TeacherBeamCache,
    method_learner,
    seq_inter_targets,
    seq_kd_targets,
    sequence_kd_split,
)
from research.models import build_model
from research.tasks import build_task
from research.train import fit


def _model(vs: int, vt: int, seed: int, d: int = 16, layers: int = 1):
    torch.manual_seed(seed)
    return build_model("transformer_seq2seq", input_shape=(8,), num_classes=vt, src_vocab=vs, layers=layers, d_model=d,
                       heads=2, dropout=0.0)


# ---------------------------------------------------------------- word-level KD = Hinton's loss per real token


def test_word_level_kd_is_the_hinton_loss_averaged_over_real_tokens():
    task = build_task("g2p")
    student, teacher = _model(9, 7, 0), _model(9, 7, 1)
    x = torch.tensor([[3, 4, 5, PAD], [6, 7, PAD, PAD]])
    y = torch.tensor([[4, 5, 6, EOS], [3, EOS, PAD, PAD]])  # 4 + 2 = 6 real target tokens
    t, alpha = 2.0, 0.3
    out = Distiller(student, teacher, temperature=t, alpha=alpha, task=task).training_step(x, y)
    s_logits = task.forward(student.train(), x, y).detach()
    t_logits = task.forward(teacher.eval(), x, y).detach()
    # by hand, position by position over the real (non-PAD) targets
    ce = kl = 0.0
    n = 0
    for b in range(2):
        for i in range(4):
            if y[b, i] == PAD:
                continue
            n += 1
            s, tt = s_logits[b, i].double(), t_logits[b, i].double()
            ce += -(s[y[b, i]] - torch.logsumexp(s, 0)).item()
            p = torch.softmax(tt / t, 0)
            q = torch.softmax(s / t, 0)
            kl += float((p * (p.log() - q.log())).sum())
    assert n == 6
    expected = alpha * ce / n + (1 - alpha) * t * t * kl / n
    assert out.losses["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out.losses["hard"].item() == pytest.approx(ce / n, rel=1e-5)


def test_padded_positions_never_reach_the_loss():
    task = build_task("g2p")
    student, teacher = _model(9, 7, 0), _model(9, 7, 1)
    x = torch.tensor([[3, 4, 5], [6, 7, PAD]])
    y = torch.tensor([[4, EOS, PAD, PAD], [3, 5, 6, EOS]])
    d = Distiller(student, teacher, temperature=4.0, alpha=0.5, task=task,
                  cached_logits=[task.predict(teacher, x, y)])
    base = d.training_step(x, y, torch.tensor([0, 1])).losses["loss"].item()
    garbage = d.cached_logits[0].clone()
    garbage[0, 2:] = 1e3 * torch.randn_like(garbage[0, 2:])  # teacher rows at PAD targets
    d.cached_logits = [garbage]
    assert d.training_step(x, y, torch.tensor([0, 1])).losses["loss"].item() == pytest.approx(base, rel=1e-6)
    garbage[0, 1, 0] += 5.0  # the EOS position is real: the loss moves
    assert d.training_step(x, y, torch.tensor([0, 1])).losses["loss"].item() != pytest.approx(base, rel=1e-6)


# ---------------------------------------------------------------- target selection, by hand


def _nbest(hyps_per_word: list[list[tuple[int, ...]]], k: int) -> NBest:
    width = max(len(h) for hs in hyps_per_word for h in hs) + 1
    tokens = torch.full((len(hyps_per_word), k, width), PAD)
    for i, hs in enumerate(hyps_per_word):
        for j, h in enumerate(hs):
            tokens[i, j, : len(h) + 1] = torch.tensor([*h, EOS])
    lp = torch.zeros(len(hyps_per_word), k, dtype=torch.float64)
    return NBest(tokens, lp, lp)


def test_seq_kd_and_seq_inter_pick_the_right_hypotheses():
    nb = _nbest([[(3, 4, 5), (3, 4), (6,)], [(5,), (5, 5, 5), ()], [(4, 4)]], k=3)
    rows, y = seq_kd_targets(nb, 1)
    assert rows.tolist() == [0, 1, 2]
    assert y.tolist() == [[3, 4, 5, EOS], [5, EOS, PAD, PAD], [4, 4, EOS, PAD]]
    rows, y = seq_kd_targets(nb, 2)  # word 2 has one hypothesis only
    assert rows.tolist() == [0, 0, 1, 1, 2]
    assert y[1].tolist() == [3, 4, EOS, PAD] and y[3].tolist() == [5, 5, 5, EOS]
    refs = torch.full((3, 2, 5), PAD)
    refs[0, 0, :3] = torch.tensor([6, 6, EOS])            # word 0: (6, 6) -> distances 3, 2, 1: the third
    refs[1, 0, :4] = torch.tensor([4, 4, 4, EOS])         # word 1: (4, 4, 4) or (5, 5): distances to (5,) 1, ...
    refs[1, 1, :3] = torch.tensor([5, 5, EOS])            # (5,) 1 / (5, 5, 5) 1 / () 2: tie -> the first
    refs[2, 0, :2] = torch.tensor([7, EOS])
    picked = seq_inter_targets(nb, refs)
    assert picked.tolist() == [[6, EOS, PAD, PAD], [5, EOS, PAD, PAD], [4, 4, EOS, PAD]]
    with pytest.raises(ValueError):
        seq_kd_targets(nb, 4)


# ---------------------------------------------------------------- the teacher's beam, cached


def test_teacher_beam_cache_keys_on_weights_data_and_settings(tmp_path):
    words = Split(torch.tensor([[3, 4, 5, PAD], [6, PAD, PAD, PAD], [7, 8, 3, 4]]), torch.full((3, 1, 4), PAD))
    teacher = _model(9, 7, 0).eval()
    cache = TeacherBeamCache(tmp_path)
    s = BeamSettings(beam=3, max_len=5)
    nb = cache.nbest(teacher, words, s)
    direct = beam_search(teacher, words.x, beam=3, max_len=5, length_penalty=1.0)
    assert [nb.hypotheses(i) for i in range(3)] == [[h.tokens for h in hyps] for hyps in direct]
    assert nb.log_prob[:, 0].tolist() == pytest.approx([hyps[0].log_prob for hyps in direct])
    assert (cache.hits, cache.misses) == (0, 1)
    cache.nbest(teacher, words, BeamSettings(beam=3, max_len=5, batch_size=1))  # batch size is not part of the key
    assert (cache.hits, cache.misses) == (1, 1)
    fresh = TeacherBeamCache(tmp_path)  # from disk
    again = fresh.nbest(teacher, words, s)
    assert (fresh.hits, fresh.misses) == (1, 0) and torch.equal(again.tokens, nb.tokens)
    fresh.nbest(teacher, words, BeamSettings(beam=2, max_len=5))
    fresh.nbest(teacher, words, BeamSettings(beam=3, max_len=5, length_penalty=0.0))
    fresh.nbest(teacher, words.subset(torch.tensor([0, 1])), s)
    with torch.no_grad():
        teacher.out.bias[3] += 1.0
    fresh.nbest(teacher, words, s)
    assert (fresh.hits, fresh.misses) == (1, 4)


# ---------------------------------------------------------------- every method through the one loop


@pytest.fixture(scope="module")
def g2p_small():
    return load_g2p(max_words=200, seed=0)


def test_every_method_trains_through_fit(g2p_small, tmp_path):
    d = g2p_small
    vs, vt = len(d.src_vocab), len(d.tgt_vocab)
    torch.manual_seed(0)
    teacher = build_model("transformer_seq2seq", input_shape=d.input_shape, num_classes=vt, src_vocab=vs, layers=1,
                          d_model=32, heads=2, dropout=0.0)
    task = build_task("g2p")
    from research.distill import Supervised

    fit(Supervised(teacher, task=task), d.train, TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cpu"), seed=0,
        progress=False)
    cache = TeacherBeamCache(tmp_path)
    settings = BeamSettings(beam=2, max_len=20)
    cfg = DistillConfig(temperature=2.0, alpha=0.5)
    nb = cache.nbest(teacher, d.train_words, settings)
    for method in METHODS:
        torch.manual_seed(1)
        student = build_model("transformer_seq2seq", input_shape=d.input_shape, num_classes=vt, src_vocab=vs, layers=1,
                              d_model=16, heads=2, dropout=0.0)
        learner, split = method_learner(method, student, teacher, pairs=d.train, words=d.train_words, cache=cache,
                                        settings=settings, distill_cfg=cfg, task=task)
        if method in ("seq_kd", "seq_word_kd"):
            assert len(split) == len(d.train_words)
            assert torch.equal(split.y, nb.tokens[:, 0])  # the teacher's top beam output, not the references
        elif method == "seq_inter":
            assert len(split) == len(d.train_words)
        else:
            assert split is d.train
        assert isinstance(learner, Distiller) == (method in ("word_kd", "seq_word_kd"))
        h = fit(learner, split, TrainConfig(epochs=1, batch_size=64, device="cpu"), seed=0, val=d.val, progress=False)
        assert math.isfinite(h.last["train_loss"]) and 0.0 <= h.last["val_wer"] <= 1.0 and h.last["val_per"] >= 0.0
    assert cache.misses == 1  # one search for all the sequence-level methods
    with pytest.raises(ValueError, match="unknown sequence method"):
        method_learner("bleu", student, teacher, pairs=d.train, words=d.train_words, cache=cache, settings=settings)
    with pytest.raises(ValueError, match="not a sequence-level method"):
        sequence_kd_split(d.train_words, nb, "word_kd")


def test_task_metrics_by_hand_on_a_fixed_output():
    """A model whose greedy output is known: WER/PER of the task against multi-reference targets."""
    task = build_task("g2p")
    model = _model(9, 7, 0).eval()
    with torch.no_grad():  # EOS at once whatever the input: every output is empty
        model.out.weight.zero_()
        model.out.bias.fill_(-10.0)
        model.out.bias[EOS] = 0.0
    x = torch.tensor([[3, 4], [5, PAD]])
    y = torch.full((2, 2, 3), PAD)
    y[0, 0, :1] = torch.tensor([EOS])          # word 0: the empty pronunciation -> right
    y[1, 0, :3] = torch.tensor([4, 5, EOS])    # word 1: (4, 5) -> wrong, distance 2 over 2
    m = task.epoch_metrics(model, x, y)
    assert m == {"wer": pytest.approx(0.5), "per": pytest.approx(2 / 2)}


# ---------------------------------------------------------------- `research distill` on CMUdict, real MLflow store


G2P_CONFIG = """
name: g2p_e2e
seed: 0
task: g2p
data: {dataset: cmudict, val_fraction: 0.05, cache_dir: .cache, g2p: {max_words: 150}}
teachers:
  - model: {name: transformer_seq2seq, args: {src_vocab: 32, layers: 1, d_model: 32, heads: 2}}
    train: {epochs: 1, batch_size: 64, lr: 0.003}
student: {name: transformer_seq2seq, args: {src_vocab: 32, layers: 1, d_model: 16, heads: 2}}
train: {epochs: 1, batch_size: 64, lr: 0.003}
distill: {temperature: 2, alpha: 1.0, sequence: {targets: beam_top, beam: 2}}
eval: {latency_repeats: 1, batch_size: 256}
tracking: {experiment: g2p_e2e}
"""


def test_research_distill_runs_sequence_level_kd_end_to_end(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from research.cli import main
    from research.config import load_run_config
    from research.data.g2p import load_g2p

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "g2p.yaml").write_text(G2P_CONFIG)
    assert main(["distill", "g2p.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test WER" in out and "test acc" not in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("g2p_e2e")
    runs = {r.data.tags["role"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"teacher", "student", "distill"}
    data = load_g2p(max_words=150, val_fraction=0.05)
    # the student alone learns from the reference pairs, the distilled one from one beam output per training word
    assert runs["student"].data.metrics["train_samples"] == len(data.train)
    assert runs["distill"].data.metrics["train_samples"] == len(data.train_words) != len(data.train)
    for r in runs.values():
        m = r.data.metrics
        assert 0 <= m["test_wer"] <= 1 and m["test_per"] >= 0 and m["params"] > 0 and m["latency_b1_ms"] > 0
        assert m["test_decode_words_per_s"] > 0 and m["test_decode_latency_b1_ms"] > 0
    assert runs["distill"].data.params["distill.sequence.targets"] == "beam_top"
    assert len(list((tmp_path / ".cache" / "teacher_beams").glob("beam-*.pt"))) == 1
    # a classification config's dump has no sequence or g2p key: its hashes and params are unchanged
    cfg = load_run_config(tmp_path / "g2p.yaml")
    assert "g2p" in cfg.data.model_dump() and "sequence" in cfg.distill.model_dump()
    from research.config import RunConfig

    plain = RunConfig().model_dump()
    assert "g2p" not in plain["data"] and "sequence" not in plain["distill"]


@pytest.mark.parametrize(("override", "message"), [
    ({"task": "classification"}, "the g2p task goes with data.dataset cmudict"),
    ({"data": {"dataset": "mnist1d", "g2p": {"max_words": 10}}}, "only the cmudict dataset reads it"),
    ({"distill": {"sequence": {"beam": 2, "top_k": 3}}}, "top_k 3 exceeds beam 2"),
])
def test_g2p_config_errors(override, message):
    import yaml

    from research.config import ConfigError, RunConfig, parse

    raw = yaml.safe_load(G2P_CONFIG)
    for k, v in override.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    with pytest.raises(ConfigError, match=message):
        parse(RunConfig, raw)


def test_full_train_adds_the_validation_words_and_pairs():
    from research.data.g2p import load_g2p_bundle, pronunciations

    b = load_g2p_bundle(max_words=80, val_fraction=0.1, seed=2)
    g = b.g2p
    full = b.full_train()
    assert len(full) == len(g.train) + len(g.val_pairs)
    assert len(g.val_pairs) == sum(len(pronunciations(False)[w]) for w in g.words["val"])
    words = b.words(full_train=True)
    assert len(words) == len(g.train_words) + len(g.val)
    decoded = ["".join(g.src_vocab.decode(x)) for x in words.x]
    assert decoded == g.words["train"] + g.words["val"]
    refs = [[tuple(g.tgt_vocab.decode(r)) for r in row if r[0] != PAD] for row in words.y]
    assert refs == [pronunciations(False)[w] for w in decoded]
    assert b.words() is g.train_words
