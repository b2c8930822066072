"""``research dashboard NAME``: optuna-dashboard over one study's storage.

The storage is resolved as every ``research study`` command resolves it
(:func:`research.sweep.storage.storage_url`, then :func:`open_storage`), so a
journal file is served through Optuna's ``JournalStorage`` object (optuna-dashboard
would otherwise need a URL, which a journal file has none of).
"""

from __future__ import annotations

from typing import Callable

import optuna

from ..tracking import mask_url
from .storage import StudyError, open_storage


def dashboard_storage(name: str, storage: str) -> optuna.storages.BaseStorage:
    """The opened storage at ``storage`` (URL or journal path), checked to hold study ``name``.

    Raises StudyError (one line, URL masked) when the journal file does not exist or the
    storage has no study of that name (the names it has are listed)."""
    store = open_storage(storage, create=False)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False))
    if name not in names:
        have = ", ".join(names) if names else "none"
        raise StudyError(f"no study named {name!r} in {mask_url(storage)} (studies there: {have})")
    return store


def serve_dashboard(name: str, storage: str, *, host: str = "127.0.0.1", port: int = 8080,
                    announce: Callable[[str], None] = lambda _msg: None) -> None:
    """Serve optuna-dashboard for the storage holding study ``name`` on ``host:port`` until
    interrupted (blocks; Ctrl-C/SIGTERM stop it). ``announce`` receives one line with the
    study's page and the masked storage before the server starts.

    Raises StudyError as :func:`dashboard_storage`; OSError when the port cannot be bound."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - wsgiref's signature
            pass  # no access log on the terminal

    store = dashboard_storage(name, storage)
    server = make_server(host, port, optuna_dashboard.wsgi(store), handler_class=QuietHandler)  # OSError: port taken
    # Requests are served in a thread of their own, so Ctrl-C/SIGTERM (delivered to the main
    # thread) never land inside a request: wsgiref logs and swallows an exception raised there,
    # and a SIGTERM during a page load left optuna-dashboard's own run_server running.
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    announce(f"optuna-dashboard at http://{host}:{port}/dashboard over {mask_url(storage)} (study {name}; Ctrl-C stops it)")
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.shutdown()
        server.server_close()
