import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RESEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with the default tracking store (./mlruns) inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def mnist1d_arrays(tmp_path_factory):
    """MNIST-1D generated once per session (about 3 s). Copy it into a test's own cache folder
    (``shutil.copytree(mnist1d_arrays, workdir / ".cache")``) so that no test shares another's
    teacher-logit cache."""
    from research.data import load_data

    d = tmp_path_factory.mktemp("mnist1d")
    load_data("mnist1d", cache_dir=d)
    return d
