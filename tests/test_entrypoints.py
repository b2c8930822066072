"""`python -m research` is the `research` command; `research dashboard` serves optuna-dashboard
over a real journal storage on 127.0.0.1 and stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from research.cli import build_parser, main
from research.sweep import open_storage

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # The child imports this checkout's package, whatever is installed.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _subcommands(help_text: str) -> list[str]:
    """The commands listed under COMMAND in argparse's help (one indented name per line)."""
    section = help_text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", section, flags=re.M)


def test_python_m_research_is_the_research_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "research", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: research ")
    listed = _subcommands(done.stdout)
    expected = list(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - the parser's own table
    assert listed == expected
    assert {"distill", "study", "dashboard", "ui"} <= set(listed)
    script = Path(sys.executable).with_name("research")  # the console script pyproject installs
    if script.exists():
        console = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
        assert console.returncode == 0 and console.stdout == done.stdout
    # Bad input through -m: exit 2 and argparse's line, like the console script.
    bad = subprocess.run([sys.executable, "-m", "research", "nonsense"], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(), timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'nonsense'" in bad.stderr


def _journal_with_study(tmp_path: Path, name: str) -> Path:
    journal = tmp_path / "optuna" / "journal.log"
    study = optuna.create_study(study_name=name, storage=open_storage(str(journal)), direction="maximize")
    study.enqueue_trial({"temperature": 4.0})
    study.optimize(lambda t: t.suggest_float("temperature", 1, 20), n_trials=2)
    return journal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local test server
        return r.status, r.read()


def test_dashboard_serves_the_study_and_stops_on_sigterm(tmp_path):
    journal = _journal_with_study(tmp_path, "dash_study")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "research", "dashboard", "dash_study", "--storage", str(journal), "--port", str(port)],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/studies")
                studies = json.loads(body)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        assert studies is not None, f"no answer on port {port}; exit {proc.poll()}"
        assert status == 200
        assert [s["study_name"] for s in studies["study_summaries"]] == ["dash_study"]
        status, page = _get(f"http://127.0.0.1:{port}/")  # redirected to the dashboard's page
        assert status == 200 and b"<html" in page.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    out = proc.stdout.read()
    assert code == 0, out
    assert f"optuna-dashboard at http://127.0.0.1:{port}/dashboard over {journal}" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_dashboard_unknown_study_exits_2_with_one_line(tmp_path, capsys):
    journal = _journal_with_study(tmp_path, "known")
    assert main(["dashboard", "unknown", "--storage", str(journal)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"research: error: no study named 'unknown' in {journal} (studies there: known)"]


def test_dashboard_missing_journal_exits_2(tmp_path, capsys):
    assert main(["dashboard", "any", "--storage", str(tmp_path / "none.log")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study storage at" in err
    assert not (tmp_path / "none.log").exists()


@pytest.mark.skipif(not os.environ.get("RESEARCH_TEST_POSTGRES_URL"), reason="needs RESEARCH_TEST_POSTGRES_URL")
def test_dashboard_unknown_study_masks_the_password(capsys):
    url = os.environ["RESEARCH_TEST_POSTGRES_URL"]
    if "@" not in url or ":" not in url.split("://", 1)[1].split("@", 1)[0]:
        pytest.skip("the URL has no password to mask")
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert main(["dashboard", f"absent-{os.getpid()}-{time.time_ns()}", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "no study named" in err and "***" in err and f":{password}@" not in err
