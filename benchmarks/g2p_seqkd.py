"""Kim & Rush (2016)'s table on grapheme-to-phoneme (CMUdict), at a budget that fits 2 CPU cores.

Rows: the teacher decoding with beam search, then the student decoding GREEDILY after each
method of ``research.distill.seqkd``: alone, word-level KD, sequence-level KD, seq-inter,
sequence-level + word-level. WER and PER on the test words (all references), students as
mean ± std over ``--seeds``; then words per second of the teacher's beam search against the
student's greedy decoding at batch 1 and 256 (CPU, ``--threads`` threads), parameters and bytes.

Every model is trained by ``research.train.fit`` (the workbench's one loop) with the
``g2p`` task; the teacher's beam outputs over the training words are computed once
(``TeacherBeamCache``, in memory) and shared by the sequence-level methods. Nothing is
tracked in MLflow; the hyperparameters below were not tuned (T = 2, alpha = 0.5 for the
word-level terms, as a first point, not a search). The validation split is only logged.

    OMP_NUM_THREADS=1 python benchmarks/g2p_seqkd.py                 # the default budget, a few minutes
    OMP_NUM_THREADS=1 python benchmarks/g2p_seqkd.py --smoke         # seconds: checks the script
    python benchmarks/g2p_seqkd.py --max-words 0 --teacher-layers 3 --teacher-d 256 --epochs 30 --seeds 0 1 2
                                                                     # the issue's setting (a GPU: --device cuda)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from research.config import DistillConfig, TrainConfig  # noqa: E402
from research.data.g2p import load_g2p  # noqa: E402
from research.decoding import beam_search, greedy_decode  # noqa: E402
from research.distill import Supervised  # noqa: E402
from research.distill.seqkd import METHODS, BeamSettings, TeacherBeamCache, method_learner  # noqa: E402
from research.evaluate import count_parameters, saved_model_bytes  # noqa: E402
from research.models import build_model  # noqa: E402
from research.stats import format_mean_std, mean_std  # noqa: E402
from research.tasks import build_task  # noqa: E402
from research.tasks.sequence import _max_output, decode_metrics  # noqa: E402
from research.train import fit  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "g2p_seqkd.md"
LABELS = {
    "student": "student alone (greedy)",
    "word_kd": "word-level KD (greedy)",
    "seq_kd": "sequence-level KD (greedy)",
    "seq_inter": "seq-inter (greedy)",
    "seq_word_kd": "sequence-level + word-level (greedy)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-words", type=int, default=1500, help="words kept from CMUdict (0: all)")
    p.add_argument("--teacher-layers", type=int, default=2)
    p.add_argument("--teacher-d", type=int, default=128)
    p.add_argument("--student-layers", type=int, default=1)
    p.add_argument("--student-d", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12, help="student epochs (and the teacher's, unless --teacher-epochs)")
    p.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: --epochs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--speed-words", type=int, default=200, help="test words timed at batch 1")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row (its export takes about 30 s)")
    p.add_argument("--smoke", action="store_true", help="300 words, 1 epoch: checks the script in seconds")
    p.add_argument("--state", type=Path, help="folder keeping the trained teacher and each finished student's figures: "
                   "a run stopped part-way resumes there with the same arguments (default: nothing kept)")
    a = p.parse_args(argv)
    if a.smoke:
        a.max_words, a.epochs, a.seeds, a.speed_words = 300, 1, [0], 20
    a.teacher_epochs = a.teacher_epochs or a.epochs
    return a


def load_state(folder: Path | None, key: dict) -> dict:
    """The figures kept in ``folder`` by an earlier run with the same ``key`` (its arguments), else {}."""
    if folder is None or not (folder / "state.json").exists():
        return {}
    state = json.loads((folder / "state.json").read_text())
    return state if state.get("key") == key else {}


def save_state(folder: Path | None, state: dict) -> None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(folder / "state.json")  # atomic: a kill leaves the old state or the new one


def words_per_second(fn, x: torch.Tensor, batch: int, limit: int) -> float:
    """Words decoded per second by ``fn(x_batch)`` over the first ``limit`` rows of ``x``."""
    x = x[:limit]
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch])
    return len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    data = load_g2p(max_words=a.max_words or None, seed=0)
    task = build_task("g2p")
    vs, vt = len(data.src_vocab), len(data.tgt_vocab)

    def model(layers: int, d: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("transformer_seq2seq", input_shape=data.input_shape, num_classes=vt, src_vocab=vs, layers=layers,
                           d_model=d, heads=4)

    train_cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, device=a.device, threads=a.threads)
    key = {k: v for k, v in vars(a).items() if k not in ("seeds", "out", "state", "no_onnx", "speed_words", "threads", "device")}
    key = json.loads(json.dumps(key, default=str))
    state = load_state(a.state, key) or {"key": key, "results": {}}
    teacher = model(a.teacher_layers, a.teacher_d, 0)
    if "teacher" in state and (a.state / "teacher.pt").exists():
        teacher.load_state_dict(torch.load(a.state / "teacher.pt"))
        teacher_train_s, teacher_val_wer = state["teacher"]["train_s"], state["teacher"]["val_wer"]
        print(f"teacher loaded from {a.state}", flush=True)
    else:
        t_cfg = train_cfg.model_copy(update={"epochs": a.teacher_epochs})
        h = fit(Supervised(teacher, task=task), data.train, t_cfg, seed=0, val=data.val, progress=False)
        teacher_train_s, teacher_val_wer = h.wall_time_s, h.last["val_wer"]
        if a.state is not None:
            a.state.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), a.state / "teacher.pt")
            state["teacher"] = {"train_s": teacher_train_s, "val_wer": teacher_val_wer}
            save_state(a.state, state)
    teacher.eval()
    settings = BeamSettings(beam=a.beam, length_penalty=a.length_penalty)
    t_greedy = decode_metrics(teacher, data.test.x, data.test.y)
    t_beam = decode_metrics(teacher, data.test.x, data.test.y, beam=a.beam, length_penalty=a.length_penalty)
    cache = TeacherBeamCache()
    t0 = time.perf_counter()
    cache.nbest(teacher, data.train_words, settings)
    beam_cache_s = time.perf_counter() - t0
    print(f"teacher: {teacher_train_s:.0f} s, val WER {teacher_val_wer:.3f}, test beam {t_beam}, greedy {t_greedy}", flush=True)

    distill_cfg = DistillConfig(temperature=a.temperature, alpha=a.alpha)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    students: dict[str, torch.nn.Module] = {}
    for seed in a.seeds:
        for method in METHODS:
            student = model(a.student_layers, a.student_d, seed)
            done = state["results"].get(f"{seed}/{method}")
            if done is not None and (a.state / f"student-{seed}-{method}.pt").exists():
                student.load_state_dict(torch.load(a.state / f"student-{seed}-{method}.pt"))
                student.eval()
                results[method].append(done)
                students[method] = student
                print(f"seed {seed} {method}: kept from {a.state}", flush=True)
                continue
            learner, split = method_learner(method, student, teacher, pairs=data.train, words=data.train_words, cache=cache,
                                            settings=settings, distill_cfg=distill_cfg, task=task)
            hist = fit(learner, split, train_cfg, seed=seed, val=data.val, progress=False)
            student.eval()
            m = {**decode_metrics(student, data.test.x, data.test.y), "val_wer": hist.last["val_wer"],
                 "train_s": hist.wall_time_s}
            results[method].append(m)
            students[method] = student
            if a.state is not None:
                torch.save(student.state_dict(), a.state / f"student-{seed}-{method}.pt")
                state["results"][f"{seed}/{method}"] = m
                save_state(a.state, state)
            print(f"seed {seed} {method}: {m}", flush=True)

    # speed: teacher beam vs student greedy, CPU at --threads threads, on the test words
    teacher_cpu, student_cpu = teacher.cpu(), students["seq_kd"].cpu()
    x = data.test.x
    max_len = _max_output(teacher, x)
    speed = {}
    for b, limit in ((1, a.speed_words), (256, len(x))):
        speed[("teacher", b)] = words_per_second(
            lambda xb: beam_search(teacher_cpu, xb, beam=a.beam, max_len=max_len, length_penalty=a.length_penalty), x, b, limit)
        speed[("student", b)] = words_per_second(lambda xb: greedy_decode(student_cpu, xb, max_len=max_len), x, b, limit)

    onnx_note = ""
    if not a.no_onnx:  # the student's greedy decoding in ONNX Runtime (research/compress/onnx_seq2seq.py)
        from research.compress.onnx_seq2seq import OrtGreedy, export_seq2seq_onnx

        exported = export_seq2seq_onnx(student_cpu)
        ort = OrtGreedy(exported, threads=a.threads)
        same = ort.decode(x, max_len=max_len) == [h.tokens for h in greedy_decode(student_cpu, x, max_len=max_len)]
        for b, limit in ((1, a.speed_words), (256, len(x))):
            speed[("onnx", b)] = words_per_second(lambda xb: ort.decode(xb, max_len=max_len), x, b, limit)
        onnx_note = (f"ONNX Runtime runs the student's two exported graphs ({exported.size_bytes:,} bytes) with the "
                     f"greedy loop in Python and no key/value cache (the whole prefix each step); its outputs on the "
                     f"test words are {'identical to' if same else 'NOT identical to'} PyTorch's.")

    total_s = time.perf_counter() - t_start
    pct = dict(digits=1, scale=100.0, unit=" %")
    lines = [
        "# Sequence-level distillation on grapheme-to-phoneme (CMUdict)",
        "",
        f"Generated by `benchmarks/g2p_seqkd.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), device {a.device}); "
        f"whole script {total_s / 60:.1f} min.",
        "",
        f"Data: {a.max_words or 'all'} CMUdict words (stress stripped, 39 phonemes), split by word with seed 0: "
        f"{len(data.train_words)} train words ({len(data.train)} pairs), {len(data.val)} val, {len(data.test)} test. "
        f"Teacher: {a.teacher_layers} layers d={a.teacher_d} ({count_parameters(teacher):,} parameters, "
        f"{saved_model_bytes(teacher):,} bytes); students: {a.student_layers} layer(s) d={a.student_d} "
        f"({count_parameters(students['student']):,} parameters, {saved_model_bytes(students['student']):,} bytes). "
        f"Students trained {a.epochs} epochs, the teacher {a.teacher_epochs}; Adam lr {a.lr}, batch {a.batch_size}, cosine schedule, dropout 0.1 "
        f"(teacher {teacher_train_s:.0f} s). Beam {a.beam}, length penalty {a.length_penalty} (score / |Y|^alpha); "
        f"the teacher's beam over the training words took {beam_cache_s:.0f} s, once. "
        f"Word-level terms: T = {a.temperature}, alpha = {a.alpha} (not searched). Students: seeds {a.seeds}.",
        "",
        "| model | test WER | test PER | val WER |",
        "|---|---|---|---|",
        f"| teacher, beam {a.beam} | {100 * t_beam['wer']:.1f} % | {100 * t_beam['per']:.1f} % | |",
        f"| teacher, greedy | {100 * t_greedy['wer']:.1f} % | {100 * t_greedy['per']:.1f} % | {100 * teacher_val_wer:.1f} % |",
    ]
    for method in METHODS:
        rs = results[method]
        cells = [format_mean_std(*mean_std(r[k] for r in rs), **pct) for k in ("wer", "per", "val_wer")]
        lines.append(f"| {LABELS[method]} | {' | '.join(cells)} |")
    lines += [
        "",
        f"Speed on the test words (CPU, {a.threads} thread(s); batch 1 over the first {a.speed_words} words):",
        "",
        "| decoder | words/s at batch 1 | words/s at batch 256 |",
        "|---|---|---|",
        f"| teacher, beam {a.beam} | {speed[('teacher', 1)]:.0f} | {speed[('teacher', 256)]:.0f} |",
        f"| student, greedy | {speed[('student', 1)]:.0f} | {speed[('student', 256)]:.0f} |",
        f"| ratio | {speed[('student', 1)] / speed[('teacher', 1)]:.1f} x | "
        f"{speed[('student', 256)] / speed[('teacher', 256)]:.1f} x |",
    ]
    if ("onnx", 1) in speed:
        lines.append(f"| student, greedy, ONNX Runtime | {speed[('onnx', 1)]:.0f} | {speed[('onnx', 256)]:.0f} |")
    lines += [
        "",
        "PyTorch rows decode incrementally (each decoder layer keeps its inputs at earlier positions). " + onnx_note,
        "",
        "Kim & Rush (2016) on WMT En-De, greedy students: 14.7 BLEU alone, 15.4 word-level KD, 18.9 sequence-level KD; "
        "published CMUdict Transformer (3 layers, d=256): 20.6 % WER. The numbers above are a small-budget "
        "reproduction (few words, few epochs, one teacher), not comparable in level; see README for what is missing.",
        "",
        "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/g2p_seqkd.py " + " ".join(argv or sys.argv[1:]) + "`",
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
