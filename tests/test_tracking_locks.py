"""A store locked by another process (several study workers closing their runs at once on a
signal): the write is retried, not lost; any other error is not retried."""

import sqlite3

import pytest

from research import tracking


def test_a_locked_write_is_retried_until_it_goes_through(monkeypatch):
    monkeypatch.setattr(tracking, "_LOCKED_RETRY_DELAYS", (0.0, 0.0, 0.0))
    calls = []

    def write():
        calls.append(1)
        if len(calls) < 3:  # SQLite's own error, wrapped as MLflow and SQLAlchemy wrap it
            raise RuntimeError("store failed") from sqlite3.OperationalError("database is locked")
        return "done"

    assert tracking._retrying_locked(write) == "done" and len(calls) == 3


def test_a_store_locked_for_good_raises_after_the_retries(monkeypatch):
    monkeypatch.setattr(tracking, "_LOCKED_RETRY_DELAYS", (0.0, 0.0))
    calls = []

    def write():
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        tracking._retrying_locked(write)
    assert len(calls) == 3  # two retries, then the last try


def test_other_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(tracking, "_LOCKED_RETRY_DELAYS", (0.0, 0.0))
    calls = []

    def write():
        calls.append(1)
        raise sqlite3.OperationalError("attempt to write a readonly database")

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        tracking._retrying_locked(write)
    assert len(calls) == 1
