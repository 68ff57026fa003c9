"""cmedu.colab: outside a clone, the notebooks' first cell clones the repository once and the library finds
its data/ and checkpoints/ there (tested against a clone of this repository, as Colab would clone GitHub's)."""
import os
import subprocess
from pathlib import Path

import pytest

from cmedu import colab
from cmedu.checkpoints import resolve

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CMEDU_DATA", raising=False)
    monkeypatch.delenv("CMEDU_CHECKPOINTS", raising=False)


def test_inside_the_repository_nothing_is_cloned(tmp_path, clean_env):
    root = colab.ensure_repository(url="/nonexistent", dest=tmp_path / "never", start=REPO / "notebooks")
    assert root == REPO and not (tmp_path / "never").exists()
    assert os.environ["CMEDU_CHECKPOINTS"] == str(REPO / "checkpoints")


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout of the repository to clone from")
def test_outside_a_clone_the_repository_is_cloned_once(tmp_path, monkeypatch, clean_env):
    # a local bare mirror without the working tree's ignored files stands in for GitHub
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "-c", "pack.compression=0", "-c", "core.compression=0", "clone", "--bare", "--depth", "1", "--quiet", f"file://{REPO}", str(remote)], check=True)
    monkeypatch.setattr(colab, "find_repository", lambda start=None: None)  # as if the package came from pip
    dest = tmp_path / "cmedu"
    root = colab.ensure_repository(url=f"file://{remote}", dest=dest)
    assert root == dest.resolve() and (dest / "checkpoints" / "mnist_cd.pt").is_file()
    assert not (tmp_path / "cmedu.partial").exists()
    assert resolve("mnist_cd.pt").is_file()
    assert colab.ensure_repository(url="/nonexistent", dest=dest) == root  # second call: no clone


def test_a_failed_clone_leaves_nothing_and_names_the_fix(tmp_path, monkeypatch, clean_env):
    monkeypatch.setattr(colab, "find_repository", lambda start=None: None)
    with pytest.raises(RuntimeError, match="clone it by hand"):
        colab.ensure_repository(url=str(tmp_path / "no-such-repo"), dest=tmp_path / "cmedu")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="dest="):
        colab.ensure_repository(url="/nonexistent", dest=tmp_path / "busy")
