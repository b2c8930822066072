"""Faults of a study, for real: `kill -9` of `research study run` in the middle of a
trial, SIGTERM, Ctrl-C during an enqueued default, then `study resume`; and no
password of a storage URL in MLflow or in the output.

What every test here checks in the end: no trial lost (the study ends with its
n_trials COMPLETE trials, an enqueued default included), no trial and no MLflow
run left RUNNING."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from research.cli import main

from .study_support import PLAIN, all_runs, blank_db, chdir_to, client_for, journal, keep_torch_threads, load, study_cache  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("RESEARCH_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL and not IN_CI, reason="set RESEARCH_TEST_POSTGRES_URL (.ci/postgres.sh starts a server)")
BACKENDS = ["journal", pytest.param("postgresql", marks=needs_postgres)]


def plain(name: str, cache: Path, *, n_trials: int, enqueue: str = "[]", pruner: str = "none", epochs: int = 2) -> str:
    """The tiny study; ``epochs``: the students' (a test that must catch a trial RUNNING gives
    it several, so the trial outlasts the poll on a fast machine too)."""
    text = PLAIN.format(name=name, cache=cache, sampler="random", n_trials=n_trials)
    assert "train: {epochs: 2, threads: 1}" in text
    text = text.replace("train: {epochs: 2, threads: 1}", f"train: {{epochs: {epochs}, threads: 1}}")
    text = text.replace("enqueue: []", f"enqueue: {enqueue}").replace("pruner: {name: none}", f"pruner: {{name: {pruner}}}")
    assert f"enqueue: {enqueue}" in text and f"pruner: {{name: {pruner}}}" in text
    return text


def open_study(work: Path, name: str, storage: list[str]) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage[1]) if storage else load(work, name)


@contextlib.contextmanager
def storage_for(backend: str, name: str):
    """The --storage arguments of a backend; a PostgreSQL study is deleted afterwards (shared database)."""
    if backend == "journal":
        yield []
        return
    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    try:
        yield ["--storage", POSTGRES_URL]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=POSTGRES_URL)
        gc.collect()  # the in-process commands' storages, and their pooled connections (the server is shared)


def assert_nothing_running(study: optuna.Study, client, experiment: str) -> None:
    assert not [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert not [(r.data.tags.get("role"), r.info.run_name) for r in all_runs(client, experiment) if r.info.status == "RUNNING"]


def wait_for_running_trial(proc: subprocess.Popen, work: Path, name: str, storage: list[str], log: Path, limit_s: float = 600.0):
    """Poll the storage until a trial is RUNNING with its MLflow run started (in the middle of a trial)."""
    deadline = time.monotonic() + limit_s  # a guard against a hang, not a timing assertion
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the study ended before a trial ran:\n{log.read_text()}"
        with contextlib.suppress(KeyError, FileNotFoundError, ValueError):
            if storage or (work / "mlruns" / "optuna" / "journal.log").exists():
                running = [t for t in open_study(work, name, storage).get_trials(states=(TrialState.RUNNING,))
                           if "mlflow_run_id" in t.user_attrs]
                if running:
                    return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no trial started:\n{log.read_text()}")


def start_cli(work: Path, args: list[str], log: Path, *, kill_at: str | None = None) -> subprocess.Popen:
    """`research ARGS` in ``work``; ``kill_at``: the process kills itself (SIGKILL) at that
    named point (research.process.kill_point)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RESEARCH_TEST_KILL_AT", None)
    if kill_at:
        env["RESEARCH_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "research.cli", *args], cwd=work, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


# ---------------------------------------------------------------- kill -9


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_in_a_trial_then_resume_fails_it_closes_its_run_and_loses_no_trial(backend, tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"k9_{backend}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=2, epochs=8))
    with storage_for(backend, name) as storage:
        log = tmp_path / "run.log"
        proc = start_cli(tmp_path, ["study", "run", "s.yaml", "--no-progress", *storage], log)
        try:
            victim = wait_for_running_trial(proc, tmp_path, name, storage, log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # What the issue found: the dead trial and its run stay RUNNING until something fails them.
        assert open_study(tmp_path, name, storage).trials[victim.number].state == TrialState.RUNNING
        assert victim.user_attrs["worker"]["pid"] == proc.pid and victim.user_attrs["worker"]["host"] == socket.gethostname()

        assert main(["study", "resume", name, "--no-progress", *storage]) == 0

        study = open_study(tmp_path, name, storage)
        dead = study.trials[victim.number]
        assert dead.state == TrialState.FAIL
        assert f"worker process {proc.pid}" in dead.user_attrs["lost"] and "gone" in dead.user_attrs["lost"]
        client = client_for(tmp_path)
        run = client.get_run(victim.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert "lost" in run.data.tags["error"] and f"worker process {proc.pid}" in run.data.tags["error"]
        # The lost trial used none of the study's 2 trials: 2 COMPLETE besides it.
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
        assert_nothing_running(study, client, name)
        assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_while_the_teacher_trains_then_resume_closes_the_teacher_run(backend, tmp_path, monkeypatch, study_cache, blank_db):
    """The other point of a study where a process owns an MLflow run and no trial: the teacher's
    training (before any trial). Resume closes the dead teacher's run FAILED, does not reuse it
    (it has no model), trains the teacher again and distils from the new one."""
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"k9t_{backend}_{uuid.uuid4().hex[:8]}"
    text = plain(name, study_cache, n_trials=1)
    assert text.count("epochs: 1, threads: 1") == 1  # the teacher's: long enough to be caught training
    (tmp_path / "s.yaml").write_text(text.replace("epochs: 1, threads: 1", "epochs: 4, threads: 1"))
    with storage_for(backend, name) as storage:
        log = tmp_path / "run.log"
        proc = start_cli(tmp_path, ["study", "run", "s.yaml", "--no-progress", *storage], log)
        client = client_for(tmp_path)
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        teacher = None
        try:
            while teacher is None and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(Exception):  # the experiment may not exist yet
                    running = [r for r in all_runs(client, name) if r.data.tags.get("role") == "teacher" and r.info.status == "RUNNING"]
                    teacher = running[0] if running else None
                time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert teacher is not None and teacher.data.tags["process.pid"] == str(proc.pid)
        assert client.get_run(teacher.info.run_id).info.status == "RUNNING"  # left so by the dead process
        assert open_study(tmp_path, name, storage).get_trials() == []  # killed before any trial

        assert main(["study", "resume", name, "--no-progress", *storage]) == 0
        run = client.get_run(teacher.info.run_id)
        assert run.info.status == "FAILED" and f"process {proc.pid}" in run.data.tags["error"] and "gone" in run.data.tags["error"]
        assert run.data.tags["error_type"] == "WorkerLost"
        study = open_study(tmp_path, name, storage)
        assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
        teachers = [r for r in all_runs(client, name) if r.data.tags.get("role") == "teacher"]
        again = [r for r in teachers if r.info.run_id != teacher.info.run_id]
        assert len(again) == 1 and again[0].info.status == "FINISHED"
        assert again[0].data.tags["teacher_key"] == teacher.data.tags["teacher_key"]  # the same teacher, trained again
        trial_run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
        assert trial_run.data.tags["teacher_run_id"] == again[0].info.run_id  # distilled from the new one, not the dead one
        assert_nothing_running(study, client, name)
        assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_while_a_trial_logs_its_model_then_resume(backend, tmp_path, monkeypatch, study_cache, blank_db):
    """The end of a trial: its metrics are logged, its student's weights are being uploaded,
    neither the run nor the trial has ended. The process kills itself there (SIGKILL, the
    test-only research.process.kill_point)."""
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"k9m_{backend}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=1))
    with storage_for(backend, name) as storage:
        log = tmp_path / "run.log"
        proc = start_cli(tmp_path, ["study", "run", "s.yaml", "--no-progress", *storage], log, kill_at="log_weights")
        assert proc.wait(timeout=600) == -signal.SIGKILL, log.read_text()
        study = open_study(tmp_path, name, storage)
        [victim] = study.get_trials()
        assert victim.state == TrialState.RUNNING and victim.user_attrs["worker"]["pid"] == proc.pid
        client = client_for(tmp_path)
        run = client.get_run(victim.user_attrs["mlflow_run_id"])
        assert run.info.status == "RUNNING" and "val_accuracy" in run.data.metrics  # it died after its evaluation
        assert not any(a.path == "weights.pt" for a in client.list_artifacts(run.info.run_id))  # ... and before the upload

        assert main(["study", "resume", name, "--no-progress", *storage]) == 0

        study = open_study(tmp_path, name, storage)
        dead = study.trials[victim.number]
        assert dead.state == TrialState.FAIL and f"worker process {proc.pid}" in dead.user_attrs["lost"]
        run = client.get_run(victim.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and f"trial {victim.number} lost" in run.data.tags["error"]
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # the lost trial replaced, not counted
        [done] = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert any(a.path == "weights.pt" for a in client.list_artifacts(done.user_attrs["mlflow_run_id"]))
        assert_nothing_running(study, client, name)
        assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_of_one_worker_then_resume(backend, tmp_path, monkeypatch, study_cache, blank_db):
    """A worker of `--workers 2` killed in its trial: the other finishes its own, the command says
    so in one line (exit 1), and resume fails the dead worker's trial and runs one in its place."""
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"k9w_{backend}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=2, epochs=8))
    with storage_for(backend, name) as storage:
        log = tmp_path / "run.log"
        proc = start_cli(tmp_path, ["study", "run", "s.yaml", "--workers", "2", "--no-progress", *storage], log)
        try:
            victim = wait_for_running_trial(proc, tmp_path, name, storage, log)
            worker = victim.user_attrs["worker"]["pid"]
            assert worker != proc.pid
            os.kill(worker, signal.SIGKILL)
            assert proc.wait(timeout=600) == 1, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors = [line for line in log.read_text().splitlines() if line.startswith("research: error:")]
        assert len(errors) == 1 and "worker(s) exited" in errors[0] and f"-{int(signal.SIGKILL)}" in errors[0], log.read_text()
        assert "Traceback" not in log.read_text()
        # The other worker went on and finished its share while its sibling lay dead.
        before = {t.number: t for t in open_study(tmp_path, name, storage).get_trials()}
        assert sorted(t.state.name for t in before.values()) == ["COMPLETE", "FAIL"]
        # The parent saw its worker die: the trial and its run are failed before it exits, not at resume.
        assert f"worker exited with code -{int(signal.SIGKILL)}" in before[victim.number].user_attrs["lost"]
        assert client_for(tmp_path).get_run(victim.user_attrs["mlflow_run_id"]).info.status == "FAILED"

        assert main(["study", "resume", name, "--no-progress", *storage]) == 0
        study = open_study(tmp_path, name, storage)
        client = client_for(tmp_path)
        dead = study.trials[victim.number]
        assert dead.state == TrialState.FAIL and f"worker process {worker}" in dead.user_attrs["lost"]
        assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "FAILED"
        trials = study.get_trials()
        assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]  # n_trials = 2 finished, none lost
        assert sorted(t.number for t in trials) == [0, 1, 2]  # unique numbers
        runs = [r for r in all_runs(client, name) if r.data.tags.get("role") == "trial"]
        assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [0, 1, 2]  # one run per trial
        assert_nothing_running(study, client, name)
        assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


# ---------------------------------------------------------------- SIGTERM, Ctrl-C


def _interrupt_in_trial(monkeypatch, number: int, interrupt) -> list[int]:
    """Make the epoch callback of trial ``number`` call ``interrupt()`` once (after its first epoch)."""
    from research.sweep import objective

    real = objective._pruning_callback
    calls: list[int] = []

    def wrapped(trial, target):
        report = real(trial, target)

        def callback(epoch, metrics):
            report(epoch, metrics)
            if trial.number == number and not calls:
                calls.append(trial.number)
                interrupt()

        return callback

    monkeypatch.setattr(objective, "_pruning_callback", wrapped)
    return calls


def test_sigterm_in_a_trial_closes_trial_and_runs_exits_143_and_resume_completes(tmp_path, monkeypatch, study_cache, blank_db, capsys):
    chdir_to(monkeypatch, tmp_path, blank_db)
    (tmp_path / "s.yaml").write_text(plain("term", study_cache, n_trials=2, pruner="median", epochs=8))
    calls = _interrupt_in_trial(monkeypatch, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)

    assert main(["study", "run", "s.yaml", "--no-progress"]) == 128 + signal.SIGTERM == 143
    assert calls == [1]
    assert signal.getsignal(signal.SIGTERM) is previous  # the CLI's handler is gone again
    assert "SIGTERM" in capsys.readouterr().err
    study = load(tmp_path, "term")
    client = client_for(tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "SIGTERM" in trials[1].user_attrs["lost"]
    assert client.get_run(trials[1].user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    assert_nothing_running(study, client, "term")

    monkeypatch.undo()  # no more interrupts
    chdir_to(monkeypatch, tmp_path)
    assert main(["study", "resume", "term", "--no-progress"]) == 0
    study = load(tmp_path, "term")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]  # 2 results, the lost one apart
    assert_nothing_running(study, client, "term")
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


def test_a_signal_landing_while_optuna_tells_leaves_no_trial_running(tmp_path, monkeypatch, study_cache, blank_db):
    """The objective closes its own trial on Ctrl-C/SIGTERM; a signal that arrives while Optuna
    stores the result (outside the objective) is caught by the process on its way out. Optuna's
    tell is wrapped here to stand for that moment (an internal name: the only seam there is)."""
    import optuna.study._optimize as optimize

    chdir_to(monkeypatch, tmp_path, blank_db)
    (tmp_path / "s.yaml").write_text(plain("tell", study_cache, n_trials=2))
    real = optimize._tell_with_warning

    def tell(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, inside this frame
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize, "_tell_with_warning", tell)
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 143
    study = load(tmp_path, "tell")
    [trial] = study.get_trials()
    assert trial.state == TrialState.FAIL
    assert "SIGTERM" in trial.user_attrs["lost"] and f"its process {os.getpid()} stopped" in trial.user_attrs["lost"]
    assert_nothing_running(study, client_for(tmp_path), "tell")


def test_ctrl_c_in_an_enqueued_default_then_resume_runs_the_default_again(tmp_path, monkeypatch, study_cache, blank_db):
    from research import sweep
    from research.tracking import Tracker

    chdir_to(monkeypatch, tmp_path, blank_db)
    (tmp_path / "s.yaml").write_text(plain("dflt", study_cache, n_trials=2, pruner="median", enqueue="[{temperature: 3.0, alpha: 0.25}]", epochs=8))

    def ctrl_c():
        raise KeyboardInterrupt

    calls = _interrupt_in_trial(monkeypatch, 0, ctrl_c)
    assert main(["study", "run", "s.yaml", "--no-progress"]) == 130
    assert calls == [0]
    monkeypatch.undo()
    chdir_to(monkeypatch, tmp_path)
    assert main(["study", "resume", "dflt", "--no-progress"]) == 0

    study = load(tmp_path, "dflt")
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["enqueued"] and trials[0].user_attrs["lost"]
    again = [t for t in trials if t.user_attrs.get("requeue_of") == 0]
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].params == pytest.approx({"temperature": 3.0, "alpha": 0.25})
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    client = client_for(tmp_path)
    assert_nothing_running(study, client, "dflt")
    # Once only: a second recovery enqueues nothing (the copy carries requeue_of).
    assert sweep.recover(study, Tracker(study.user_attrs["mlflow_tracking_uri"])).requeued == []
    assert len(study.get_trials()) == 3


# ---------------------------------------------------------------- who is gone


def test_worker_gone_by_pid_start_time_and_heartbeat():
    from research.sweep import worker_gone, worker_identity

    me = worker_identity()
    now = time.time()
    assert worker_gone(me, now, now) is None
    # The same pid with another start time: the pid was reused, the worker is gone.
    assert "another process" in worker_gone({**me, "start": me["start"] + 1.0}, now, now)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(done.stdout)
    if not os.path.exists(f"/proc/{dead_pid}"):  # (the pid may be reused already; then the check above covers it)
        assert "is gone" in worker_gone({**me, "pid": dead_pid}, now, now)
    other = {"host": "elsewhere.example", "pid": 1, "start": 1.0}
    assert worker_gone(other, now - 60, now - 600, now=now) is None  # beat a minute ago: alive
    assert "no heartbeat for 200 s" in worker_gone(other, now - 200, now - 600, now=now)
    assert worker_gone(None, None, now - 10, now=now) is None  # just started, not yet recorded
    assert "no worker recorded" in worker_gone(None, None, now - 600, now=now)


# A process that recovers a study when told to (a file barrier), then prints what it enqueued again.
RECOVER_AT_ONCE = """
import json, sys, time
from pathlib import Path
from research import sweep
from research.tracking import Tracker

name, storage, ready, go = sys.argv[1:5]
study, cfg = sweep.load_existing(name, storage)
tracker = Tracker(study.user_attrs["mlflow_tracking_uri"])
Path(ready).touch()
deadline = time.monotonic() + 300  # a guard against a hang
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.001)
print(json.dumps(sweep.recover(study, tracker).requeued))
"""


@pytest.mark.parametrize("backend", ["journal", "sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_study_lock_is_really_taken_on_each_storage(backend, tmp_path):
    """The race test above may pass by luck; this one may not: inside study_lock, the lock is
    held where other processes look for it (a lock file beside the journal or SQLite file, a
    PostgreSQL advisory lock), and released after. (A journal study once got no lock at all:
    its storage's file backend was taken for Optuna's cache.)"""
    import sqlalchemy as sa

    from research.sweep import open_storage
    from research.sweep.faults import study_lock

    name = f"lock_{backend}_{uuid.uuid4().hex[:8]}"
    url = {"journal": str(tmp_path / "journal.log"), "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}", "postgresql": POSTGRES_URL}[backend]
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    study = optuna.load_study(study_name=name, storage=open_storage(url))  # as the commands hold it
    try:
        if backend == "postgresql":
            engine = sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)

            def held() -> int:
                with engine.connect() as c:
                    return c.execute(sa.text("select count(*) from pg_locks where locktype = 'advisory' and granted")).scalar()

            before = held()
            with study_lock(study, "requeue"):
                assert held() == before + 1
            assert held() == before
        else:
            lock = Path(url.removeprefix("sqlite:///") + ".requeue.lock")
            with study_lock(study, "requeue"):
                assert lock.exists()
            assert not lock.exists()
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() stands for a worker's optimize here
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_recovering_at_once_enqueue_a_lost_default_once(backend, tmp_path, monkeypatch, blank_db):
    """Two machines resume one study at the same moment: the lost default is enqueued again
    by one of them only (without the lock both find no copy, and both add one)."""
    from research.config import load_study_config
    from research.sweep import create_or_join, storage_url
    from research.tracking import Tracker

    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"race_{backend}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, tmp_path / "cache", n_trials=2, enqueue="[{temperature: 3.0, alpha: 0.25}]"))
    with storage_for(backend, name) as storage:
        url = storage_url(storage[1] if storage else None)
        study = create_or_join(load_study_config("s.yaml"), Tracker(), url)
        # What Ctrl-C in the default leaves (see the Ctrl-C test): its trial FAIL, marked lost.
        lost = study.ask()
        assert lost.user_attrs.get("enqueued")  # the default (its values are drawn later, from fixed_params)
        lost.set_user_attr("lost", "interrupted (KeyboardInterrupt)")
        study.tell(lost, state=TrialState.FAIL)

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        go = tmp_path / "go"
        procs = [subprocess.Popen([sys.executable, "-c", RECOVER_AT_ONCE, name, url, str(tmp_path / f"ready{i}"), str(go)], cwd=tmp_path,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        try:
            deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
            while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.01)
            go.touch()  # both are loaded: recover at once
            outputs = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [p.returncode for p in procs] == [0, 0], outputs
        requeued = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
        assert requeued == ["[0]", "[]"], outputs  # one process enqueued it, the other found its copy

        trials = open_study(tmp_path, name, storage).get_trials()
        copies = [t for t in trials if t.user_attrs.get("requeue_of") == lost.number]
        assert len(copies) == 1 and len(trials) == 2, [(t.number, t.state.name, t.user_attrs) for t in trials]
        assert copies[0].state == TrialState.WAITING and copies[0].user_attrs["enqueued"]
        assert copies[0].system_attrs["fixed_params"] == pytest.approx({"temperature": 3.0, "alpha": 0.25})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() stands for a worker's optimize here
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@needs_postgres
def test_a_trial_failed_by_optunas_heartbeat_check_is_lost_and_its_default_enqueued_again(tmp_path, monkeypatch, blank_db):
    """PostgreSQL: a worker on another machine died in the enqueued default; Optuna's own
    heartbeat check (which any live worker runs before its next trial) fails its trial. That
    trial is no result: it is marked lost, not counted, and the default is enqueued again."""
    import sqlalchemy as sa

    from research.config import load_study_config
    from research.sweep import count_finished, create_or_join, recover
    from research.tracking import Tracker

    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"stale_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, tmp_path / "cache", n_trials=2, enqueue="[{temperature: 3.0, alpha: 0.25}]"))
    with storage_for("postgresql", name):
        study = create_or_join(load_study_config("s.yaml"), Tracker(), POSTGRES_URL)
        dead = study.ask()  # the default, RUNNING on a machine that then died
        assert dead.user_attrs.get("enqueued")
        dead.set_user_attr("worker", {"host": "elsewhere.example", "pid": 4242, "start": 1.0})
        dead.set_user_attr("heartbeat", time.time())  # our own beat looks fresh: only Optuna's check can fail it
        study._storage.record_heartbeat(dead._trial_id)
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as c:  # its last Optuna heartbeat, 10 minutes ago (the grace period is 120 s)
            c.execute(sa.text("update trial_heartbeats set heartbeat = heartbeat - interval '10 minutes' where trial_id = :t"),
                      {"t": dead._trial_id})
        engine.dispose()
        optuna.storages.fail_stale_trials(study)  # what a live worker's optimize does before its next trial

        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert study.trials[dead.number].state == TrialState.FAIL
        assert count_finished(study) == 0  # lost, not a result
        done = recover(study, Tracker())
        assert done.requeued == [dead.number]
        copies = [t for t in study.get_trials() if t.user_attrs.get("requeue_of") == dead.number]
        assert len(copies) == 1 and copies[0].state == TrialState.WAITING
        assert copies[0].system_attrs["fixed_params"] == pytest.approx({"temperature": 3.0, "alpha": 0.25})


def test_a_run_left_running_on_another_host_is_closed_once_its_heartbeat_is_stale(tmp_path, monkeypatch, blank_db):
    """Another host's pid cannot be checked: its runs are judged by their heartbeat tag, with the
    trials' grace period (120 s). Records written as another host's would be, in a real MLflow store."""
    from research.config import load_study_config
    from research.sweep import create_or_join, recover, storage_url
    from research.tracking import Tracker

    chdir_to(monkeypatch, tmp_path, blank_db)
    (tmp_path / "s.yaml").write_text(plain("elsewhere", tmp_path / "cache", n_trials=1))
    tracker = Tracker()
    study = create_or_join(load_study_config("s.yaml"), tracker, storage_url())
    client = client_for(tmp_path)
    experiment = client.get_experiment_by_name("elsewhere").experiment_id
    now = time.time()
    there = {"process.host": "elsewhere.example", "process.pid": "4242", "process.start": "1234"}
    assert socket.gethostname() != "elsewhere.example"

    def teacher_run(tags: dict[str, str], started: float) -> str:
        run = client.create_run(experiment, start_time=int(started * 1000), run_name="teacher-0-mnist1d_cnn",
                                tags={"role": "teacher", "method": "teacher", **tags})
        return run.info.run_id

    # Started 15 min ago; last beat 10 min ago (> 120 s): dead. Last beat 10 s ago: alive, however old the run.
    stale = teacher_run({**there, "heartbeat": f"{now - 600:.0f}"}, now - 900)
    alive = teacher_run({**there, "heartbeat": f"{now - 10:.0f}"}, now - 900)
    # No heartbeat (a version that did not beat): another host's run cannot be judged, it is left alone.
    unknown = teacher_run(there, now - 900)
    # This host, a live process (this one), its beat long stale: the pid check decides, not the age.
    me = {"process.host": socket.gethostname(), "process.pid": str(os.getpid()),
          "process.start": Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]}
    here = teacher_run({**me, "heartbeat": f"{now - 600:.0f}"}, now - 900)

    done = recover(study, tracker)

    assert done.runs_closed == [stale]
    run = client.get_run(stale)
    assert run.info.status == "FAILED" and run.data.tags["error_type"] == "WorkerLost"
    assert "teacher run lost" in run.data.tags["error"] and "4242 on elsewhere.example" in run.data.tags["error"]
    age = re.search(r"sent no heartbeat for (\d+) s", run.data.tags["error"])
    assert age and 600 <= int(age[1]) < 900, run.data.tags["error"]  # from the last beat, not from the run's start (900 s)
    assert [client.get_run(r).info.status for r in (alive, unknown, here)] == ["RUNNING"] * 3
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "RUNNING"  # the parent: resume's
    for r in (alive, unknown, here):
        client.set_terminated(r, "FINISHED")


def test_a_run_beats_while_its_block_runs_and_stops_after(tmp_path, blank_db):
    import threading

    from research.tracking import HEARTBEAT_TAG, Tracker

    shutil.copy(blank_db, tmp_path / "mlflow.db")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.heartbeat_s = 0.2
    client = MlflowClient(tracker.uri)
    with tracker.run("beats", "r") as run:
        first = float(client.get_run(run.run_id).data.tags[HEARTBEAT_TAG])  # set as the run starts
        assert abs(first - time.time()) < 60
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
        while float(client.get_run(run.run_id).data.tags[HEARTBEAT_TAG]) <= first:  # whole seconds: the next second's beat
            assert time.monotonic() < deadline, "the run did not beat"
            time.sleep(0.1)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("heartbeat-run-")]  # its beat ended with it


# ---------------------------------------------------------------- secrets


def test_mask_url_golden():
    from research.tracking import mask_url

    assert mask_url("postgresql://alice:s3cr:t@db.example:5432/studies") == "postgresql://alice:***@db.example:5432/studies"
    assert mask_url("postgresql+psycopg2://u:p%40ss@h/db") == "postgresql+psycopg2://u:***@h/db"
    assert mask_url("https://bob:pw@mlflow.example/") == "https://bob:***@mlflow.example/"
    for same in ("postgresql://alice@db/studies", "sqlite:///tmp/mlflow.db", "mlruns/optuna/journal.log", "http://host:5000/x"):
        assert mask_url(same) == same


@needs_postgres
def test_no_password_of_the_storage_url_in_mlflow_or_the_output(tmp_path, monkeypatch, study_cache, blank_db, capsys):
    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    password = urlsplit(POSTGRES_URL).password
    assert password, "the test URL must carry a password"
    leaked = (f":{password}@", POSTGRES_URL)  # the password as it sits in a URL ("research" alone is also the user)
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"secret_{uuid.uuid4().hex[:8]}"
    # In the study file: then the file (logged as an artifact), the config dumped beside it and
    # every run's flattened params carry it too, not only the --storage of the command line.
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=1) + f"storage: {POSTGRES_URL}\n")
    with storage_for("postgresql", name) as storage:
        assert main(["study", "run", "s.yaml", "--no-progress"]) == 0
        assert main(["study", "resume", name, "--n-trials", "1", "--no-progress", *storage]) == 0
        assert main(["study", "resume", "nosuch", *storage]) == 2  # an error that names the storage
        out = capsys.readouterr()
    printed = out.out + out.err
    assert f"--storage {POSTGRES_URL.replace(f':{password}@', ':***@')}" in printed  # the hint, masked
    client = client_for(tmp_path)
    runs = all_runs(client, name)
    parent = [r for r in runs if r.data.tags.get("role") == "study"][0]
    assert parent.data.params["study.storage"] == POSTGRES_URL.replace(f":{password}@", ":***@")
    logged = [printed]
    for r in runs:
        logged += [f"{k}={v}" for k, v in {**r.data.params, **r.data.tags}.items()]
    texts = [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".txt", ".json", ".md", ".log")
             and "optuna" not in p.parts]
    assert any(p.name == "study.yaml" for p in texts)  # the artifacts were searched
    logged += [p.read_text(errors="replace") for p in texts]
    found = [s[:200] for s in logged if any(x in s for x in leaked)]
    assert not found, found


# ---------------------------------------------------------------- signals


def test_a_second_signal_during_the_clean_up_exits_at_once():
    code = """
import os, signal, time
from research.signals import interrupt_on_signals
with interrupt_on_signals():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except KeyboardInterrupt as e:
        print(type(e).__name__, e, flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # the clean-up is slow; the user presses Ctrl-C
        time.sleep(30)
        print("clean-up finished", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.stdout == "Terminated SIGTERM received\n", done.stderr
    assert done.returncode == 128 + signal.SIGINT  # the second signal's code, at once


def test_sigterm_to_study_run_with_workers_is_forwarded_and_resume_completes(tmp_path, monkeypatch, study_cache, blank_db):
    chdir_to(monkeypatch, tmp_path, blank_db)
    (tmp_path / "s.yaml").write_text(plain("fwd", study_cache, n_trials=2, epochs=8))
    log = tmp_path / "run.log"
    proc = start_cli(tmp_path, ["study", "run", "s.yaml", "--workers", "2", "--no-progress"], log)
    try:
        victim = wait_for_running_trial(proc, tmp_path, "fwd", [], log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    study = load(tmp_path, "fwd")
    client = client_for(tmp_path)
    # Each worker got the signal and closed its own trial and run before the parent exited.
    for t in study.get_trials():
        with pytest.raises(ProcessLookupError):
            os.kill(t.user_attrs["worker"]["pid"], 0)
    lost = study.trials[victim.number].user_attrs.get("lost", "")
    assert study.trials[victim.number].state == TrialState.FAIL and "SIGTERM" in lost, log.read_text()
    # KILLED when the worker closed its run itself; FAILED when it outlived the parent's grace
    # period (a loaded machine: seen once in CI) and the parent failed its trial and run.
    expected = "FAILED" if "forwarded to the workers" in lost else "KILLED"
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == expected
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    assert_nothing_running(study, client, "fwd")

    assert main(["study", "resume", "fwd", "--no-progress"]) == 0
    study = load(tmp_path, "fwd")
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 2
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("lost") for t in study.get_trials())
    assert_nothing_running(study, client, "fwd")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_joining_one_study_end_with_its_n_trials_not_twice(backend, tmp_path, monkeypatch, study_cache, blank_db):
    """Two `study run` (two machines, or a run and a `resume` at once) of a 3-trial study: 3
    finished trials in all, not 6; a trial one of them started after the study was full is
    lost (FAIL, not counted) with the reason."""
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"join_{backend}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=3, epochs=4))
    with storage_for(backend, name) as storage:
        first = start_cli(tmp_path, ["study", "run", "s.yaml", "--no-progress", *storage], tmp_path / "first.log")
        try:
            wait_for_running_trial(first, tmp_path, name, storage, tmp_path / "first.log")
            second = start_cli(tmp_path, ["study", "run", "s.yaml", "--no-progress", *storage], tmp_path / "second.log")
            assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()
            assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
        finally:
            for p in (first, locals().get("second")):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        study = open_study(tmp_path, name, storage)
        trials = study.get_trials()
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 3, [(t.number, t.state.name, t.user_attrs.get("lost")) for t in trials]
        assert all(t.state == TrialState.COMPLETE or "surplus" in t.user_attrs.get("lost", "") for t in trials)
        assert_nothing_running(study, client_for(tmp_path), name)
        # And a third `study run` of the full study runs nothing.
        again = subprocess.run([sys.executable, "-m", "research.cli", "study", "run", "s.yaml", "--no-progress", *storage], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "already has 3 finished trials of its 3" in again.stdout, again.stdout + again.stderr
        assert len(open_study(tmp_path, name, storage).get_trials()) == len(trials)


@needs_postgres
def test_a_postgresql_study_leaves_no_connection_open_in_the_process(tmp_path, monkeypatch, study_cache, blank_db):
    """A process that runs studies again and again (a notebook, this suite) must not pile up idle
    server connections: a pool per storage object once held 60 of the server's 100 here."""
    import psutil

    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    port = urllib.parse.urlsplit(POSTGRES_URL).port or 5432

    def open_connections() -> int:
        return sum(c.raddr and c.raddr.port == port and c.status == "ESTABLISHED" for c in psutil.Process().net_connections("tcp"))

    gc.collect()
    before = open_connections()
    chdir_to(monkeypatch, tmp_path, blank_db)
    name = f"conn_{uuid.uuid4().hex[:8]}"
    (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=2))
    with storage_for("postgresql", name) as storage:
        assert main(["study", "run", "s.yaml", "--no-progress", *storage]) == 0
        assert main(["study", "resume", name, "--n-trials", "1", "--no-progress", *storage]) == 0
        assert main(["study", "list", *storage]) == 0
        assert open_connections() == before  # no garbage collection asked for: none is left to collect


# ---------------------------------------------------------------- several machines: a tracking server


@needs_postgres
def test_four_workers_share_a_postgresql_study_and_log_to_a_real_mlflow_server(tmp_path, monkeypatch, study_cache):
    """`research server`'s server (mlflow server, PostgreSQL backend in its own schema, proxied
    artifacts) on 127.0.0.1, and `study run --workers 4` over HTTP, as workers on 4 machines would."""
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    from research.mlflow_servers import start_server, stop_ui, wait_for_ui

    assert POSTGRES_URL, "CI must provide RESEARCH_TEST_POSTGRES_URL (see .ci/run)"
    tag = uuid.uuid4().hex[:8]
    name, schema = f"srv_{tag}", f"mlflow_{tag}"  # MLflow's tables apart from Optuna's (both keep an alembic_version)
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as c:
        c.execute(sa.text(f"create schema {schema}"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", tmp_path / "artifacts", "127.0.0.1", port, workers=1)
    try:
        assert wait_for_ui(server, "127.0.0.1", port), "the MLflow server did not start"
        chdir_to(monkeypatch, tmp_path)
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (tmp_path / "s.yaml").write_text(plain(name, study_cache, n_trials=4))
        with storage_for("postgresql", name) as storage:
            assert main(["study", "run", "s.yaml", "--workers", "4", "--no-progress", *storage]) == 0
            study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
            trials = study.get_trials()
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert len({t.user_attrs["worker"]["pid"] for t in trials}) > 1  # shared by several workers
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], max_results=100)
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        children = [r for r in runs if r.data.tags.get("role") == "trial"]
        assert sorted(int(r.data.tags["trial_number"]) for r in children) == [0, 1, 2, 3]  # one child run each
        assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
        assert all(r.info.status == "FINISHED" for r in children)
        keys = {frozenset(r.data.metrics) for r in children}
        assert len(keys) == 1 and {"val_accuracy", "test_accuracy"} <= next(iter(keys)), keys  # no metric missing
        assert all(any(a.path == "weights.pt" for a in client.list_artifacts(r.info.run_id)) for r in children)
        assert list((tmp_path / "artifacts").rglob("weights.pt"))  # proxied into the server's folder
    finally:
        stop_ui(server)
        with engine.begin() as c:
            c.execute(sa.text(f"drop schema if exists {schema} cascade"))
        engine.dispose()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", [["study", "run"], ["distill"], ["train-teacher"]])
@pytest.mark.parametrize("name", ['""', "'   '"])
def test_an_empty_name_exits_2_in_one_line_and_writes_nothing(command, name, tmp_path, monkeypatch, capsys):
    chdir_to(monkeypatch, tmp_path)
    (tmp_path / "s.yaml").write_text(f"name: {name}\ndata: {{dataset: mnist1d}}\nteachers: [{{model: {{name: mnist1d_cnn}}}}]\n"
                                     "student: {name: mnist1d_mlp}\n")
    assert main([*command, "s.yaml", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "name: must not be empty" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no journal, no mlruns, no cache
