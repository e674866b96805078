"""Path policy: where tagseg keeps files it derives or installs, which files a command may not overwrite (its
inputs), what a path is, and the one file-hash helper. Writing files is `tagseg.fs`'s (the atomic writer)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from .errors import InputError


def cache_dir() -> Path:
    """Derived artefacts (exported encoders, text embeddings, installed models); never the working directory."""
    root = os.environ.get("TAGSEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "tagseg"
    )
    return Path(root)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- inputs are never outputs -------------------------------------------------------------------------------------
_inputs: dict[tuple[int, int] | str, str] = {}
_guarding = False


@contextlib.contextmanager
def guarding_inputs():
    """Within one command, every file read is protected from being overwritten by its outputs. Outside a
    command (the API, a server, Slicer) files are rewritten legitimately, so nothing is recorded."""
    global _guarding
    _inputs.clear()
    _guarding = True
    try:
        yield
    finally:
        _guarding = False
        _inputs.clear()


def _identity(path: Path) -> tuple[tuple[int, int] | None, str]:
    resolved = str(Path(path).expanduser().resolve())
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino), resolved
    except OSError:
        return None, resolved


def note_input(path: str | os.PathLike) -> None:
    """Record a file the running command reads: no output may replace it (checked by inode and resolved path)."""
    if not _guarding:
        return
    inode, resolved = _identity(Path(path))
    if len(_inputs) > 100_000:  # a long-lived server: forget the oldest half
        for key in list(_inputs)[: len(_inputs) // 2]:
            del _inputs[key]
    if inode is not None:
        _inputs[inode] = str(path)
    _inputs[resolved] = str(path)


def forget_input(path: str | os.PathLike) -> None:
    """A file the command read that it owns and may replace (a resumed run's own last checkpoint)."""
    inode, resolved = _identity(Path(path))
    _inputs.pop(resolved, None)
    if inode is not None:
        _inputs.pop(inode, None)


def is_input(path: str | os.PathLike) -> str | None:
    """The input (as given) that `path` would overwrite, or None."""
    inode, resolved = _identity(Path(path))
    return _inputs.get(resolved) or (_inputs.get(inode) if inode is not None else None)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (same resolved path, or same device and inode: hard links, bind mounts)."""
    ia, ra = _identity(Path(a))
    ib, rb = _identity(Path(b))
    return ra == rb or (ia is not None and ia == ib)


def refuse_input_as_output(target: str | os.PathLike, what: str = "the output") -> None:
    source = is_input(target)
    if source is not None:
        raise InputError(f"{target}: {what} would overwrite the input {source}; choose another output name")


# ---- what a path is ---------------------------------------------------------------------------------------------
def file_kind(path: str | os.PathLike) -> str:
    """'file', 'folder', 'missing', or what else it is (FIFO, socket, device), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def require_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse anything but a regular file by its type, before it is opened (a FIFO would block forever)."""
    kind = file_kind(path)
    if kind == "missing":
        raise InputError(f"{path}: {what} not found")
    if kind == "folder":
        raise InputError(f"{path}: {what} is a folder, not a file")
    if kind != "file":
        raise InputError(f"{path}: {what} is {kind}, not a regular file")
