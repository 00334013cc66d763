"""File helpers every stage shares (a leaf module): atomic writes, cache folders, fingerprints.

A failure never leaves a half-written file or folder behind: outputs are written beside their
destination under a hidden temporary name and renamed into place at the end."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` and rename into place, so a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``out``, removed if the block fails; the caller moves its
    contents into place (:func:`publish_dir`) before leaving the block."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def publish_dir(tmp: Path, out: Path, replace: Iterable[str] = ()) -> Path:
    """Move the staged folder ``tmp`` to ``out``. If ``out`` exists, files matching the globs in
    ``replace`` are deleted there first and the staged files moved in (others are kept)."""
    if out.exists():
        for pattern in replace:
            for f in out.glob(pattern):
                f.unlink()
        for f in tmp.iterdir():
            f.replace(out / f.name)
        tmp.rmdir()
    else:
        tmp.rename(out)
    return out


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/rwkv_relax/<parts>`` (default ``~/.cache``), as other caches are."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("rwkv_relax", *parts)


def tree_fingerprint(*folders: Path, pattern: str = "*.py") -> str:
    """sha256 of the files matching ``pattern`` under ``folders`` (relative names and contents)."""
    digest = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.rglob(pattern)):
            digest.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()
