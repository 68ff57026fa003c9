"""The repository's files for a notebook that runs outside a clone (Colab): find them, or clone them once.

A package install (``pip install git+REPO_URL``) brings the library but not ``data/`` (MNIST's files) or
``checkpoints/`` (the trained models). ``ensure_repository()`` finds a folder that holds both (the current folder,
its parents, or the clone this package was installed from) and, when there is none, clones the repository. It
then points the library at that folder (``CMEDU_DATA``, ``CMEDU_CHECKPOINTS``), so later loads find the files.
"""
import os
import shutil
import subprocess
from pathlib import Path

REPO_URL = "https://github.com/cmedu/cmedu"
NEEDED = ("data", "checkpoints")


def _holds_files(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in NEEDED)


def find_repository(start=None):
    """The first of ``start`` (default: the current folder) and its parents, then the folder above this package,
    that holds ``data/`` and ``checkpoints/``; None when there is none."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents, Path(__file__).resolve().parent.parent):
        if _holds_files(folder):
            return folder
    return None


def ensure_repository(url: str = REPO_URL, dest=None, start=None) -> Path:
    """The repository folder with ``data/`` and ``checkpoints/``: found (``find_repository``) or cloned from ``url``
    into ``dest`` (default ``~/cmedu``). The clone goes to a temporary folder that is renamed when complete, so an
    interrupted clone leaves nothing half-written. Sets ``CMEDU_DATA`` and ``CMEDU_CHECKPOINTS`` to its folders."""
    root = find_repository(start)
    if root is None:
        dest = Path(dest or Path.home() / "cmedu").resolve()
        if not _holds_files(dest):
            if dest.exists():
                raise FileExistsError(f"{dest} exists but holds no data/ and checkpoints/; remove it, or pass "
                                      "dest= another folder to clone the repository into")
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            print(f"cloning {url} into {dest} (data/ and checkpoints/ are not here)")
            try:
                subprocess.run(["git", "clone", "--depth", "1", "--quiet", url, str(partial)], check=True)
            except (OSError, subprocess.CalledProcessError) as err:
                shutil.rmtree(partial, ignore_errors=True)
                raise RuntimeError(f"could not clone {url} ({err}); clone it by hand and start the notebook from "
                                   "its notebooks/ folder") from None
            if not _holds_files(partial):
                shutil.rmtree(partial, ignore_errors=True)
                raise RuntimeError(f"{url} has no data/ and checkpoints/ folders; is it the cmedu repository?")
            partial.rename(dest)
        root = dest
    os.environ["CMEDU_DATA"] = str(root / "data")
    os.environ["CMEDU_CHECKPOINTS"] = str(root / "checkpoints")
    return root
