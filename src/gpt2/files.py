"""Atomic file writes: a reader (or Snakemake) never sees a half-written output.

Outputs get the modes the user's umask gives (mkstemp/mkdtemp alone would make
them 0600/0700, unreadable in a project folder shared on a cluster), and a
folder output is only ever replaced when an earlier run of the same command
wrote it: `atomic_dir` leaves a marker naming its command in each folder.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from gpt2 import UserError

OWNER_MARK = ".gpt2-output"  # in each folder atomic_dir writes: the command that wrote it


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `dest`; fsync and rename it onto `dest` on success.

    On any exception the temp file is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, owner: str) -> Iterator[Path]:
    """Yield an empty staging folder beside `dest`; on success it replaces `dest` whole.

    `owner` names the command: `dest` is replaced only when it is missing, empty, or an earlier output
    of that command (its OWNER_MARK says so); anything else is a UserError before any work is done, so
    a mistyped --out never deletes a user's files. On any exception the staging folder is removed and
    `dest` is left as it was.
    """
    dest = Path(dest)
    check_replaceable(dest, owner)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(staging, 0o777 & ~UMASK)
    old = staging.with_suffix(".old")
    try:
        yield staging
        (staging / OWNER_MARK).write_text(owner + "\n")
        check_replaceable(dest, owner)  # again: someone may have written there meanwhile
        if dest.exists():
            os.replace(dest, old)
        os.replace(staging, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(dest: Path) -> None:
    """Staging folders of `dest` that a killed run left beside it (only atomic_dir makes these names)."""
    stale = re.compile(rf"\.{re.escape(dest.name)}\.[A-Za-z0-9_]+\.(tmp|old)")
    for path in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        if path.is_dir() and not path.is_symlink() and stale.fullmatch(path.name):
            print(f"removing {path}, left by a run that was stopped while writing {dest}", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)


def check_replaceable(dest: Path, owner: str) -> None:
    """`dest` may be replaced by `owner`'s output: missing, an empty folder, or `owner`'s earlier output."""
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_symlink() or not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder: choose another output path")
    mark = dest / OWNER_MARK
    if any(dest.iterdir()) and not (mark.is_file() and mark.read_text().strip() == owner):
        raise UserError(f"{dest} holds files that `{owner}` did not write: it is left alone; "
                        "choose a new or empty folder as the output")


def remove_stale_temps(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temp files atomic_path left in `folder` when a run was killed mid-write, logging each;
    only those of file names matching a regex of `names` (what the caller writes there)."""
    patterns = [re.compile(rf"\.(?:{name})\.[A-Za-z0-9_]+\.tmp") for name in names]
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file() and any(r.fullmatch(p.name) for r in patterns)]
    for path in stale:
        print(f"removing {path}, left by a run that was stopped while writing it", file=sys.stderr)
        path.unlink(missing_ok=True)
    return stale


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Hard-link `src` at `dest` (no space, the source untouched); copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
