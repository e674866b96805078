"""The one atomic writer: every file tagseg writes appears complete or not at all.

Path policy (where files go, which inputs an output may not replace) stays in `tagseg.paths`; this module
only writes, checks and renames. It is the one place that calls `os.replace` (a guard test keeps it so).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import secrets
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import InputError, TagsegError, one_line
from .paths import refuse_input_as_output

# ---- the one atomic writer ------------------------------------------------------------------------------------
# Every output goes through `AtomicFile`: written under a temporary name beside the target, fsynced, checked
# (non-empty, then the caller's `verify` reads it back), and only then renamed over the target. A short write, a
# full disk or a failed check raises; the previous file stays as it was. The temporary name carries the writer's
# process id, `.tagseg-<pid>-<random>.part<suffix>`, so a later run removes what a killed run left behind, and
# SIGTERM/SIGINT remove what the running process has open.
PART_PREFIX = ".tagseg-"
_PART_RE = re.compile(r"\.tagseg-(\d+)-[A-Za-z0-9_]+\.part[A-Za-z0-9_.-]*\Z")
_live_parts: set[str] = set()
_live_lock = threading.Lock()
_handlers_installed = False


class WriteError(InputError):
    """An output could not be written completely (the OS's reason in the message); the previous file is kept."""

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


def _remove_live_parts() -> None:
    with _live_lock:
        parts = list(_live_parts)
        _live_parts.clear()
    for part in parts:
        with contextlib.suppress(OSError):
            os.unlink(part)


def _on_signal(signum, frame) -> None:
    _remove_live_parts()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_previous_handlers: dict = {}


def _install_signal_cleanup() -> None:
    """SIGTERM/SIGINT remove this process's partial files, then do what they did before."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_IGN,):
                continue
            _previous_handlers[signum] = (
                previous if callable(previous) and previous is not signal.default_int_handler else None
            )
            signal.signal(signum, _on_signal)
    atexit.register(_remove_live_parts)
    _handlers_installed = True


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder: Path) -> list[Path]:
    """Partial files in `folder` left by tagseg processes that no longer run (killed mid-write)."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _PART_RE.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        path = Path(folder) / name
        with contextlib.suppress(OSError):
            if path.is_symlink() or not path.is_file():
                continue
            path.unlink()
            removed.append(path)
    return removed


def missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, outermost first."""
    missing = []
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing[::-1]


def make_parents(path: Path) -> list[Path]:
    """Create the folders above `path`; returns the ones created (for `remove_folders` on failure)."""
    created = missing_parents(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return created


def remove_folders(created: list[Path]) -> None:
    """Remove folders `make_parents` created, innermost first, when they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


def _os_reason(exc: BaseException, folder: Path) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or os.strerror(exc.errno)} [{errno.errorcode.get(exc.errno, exc.errno)}]"
    free = _free_bytes(folder)
    if free is not None and free < (1 << 20):
        return f"{os.strerror(errno.ENOSPC)} [ENOSPC] ({free} bytes free)"
    return one_line(exc, 200)


class AtomicFile:
    """`with AtomicFile(target) as part: write(part.path); part.commit(verify)`: nothing reaches `target`
    unless every byte was written and checked; on any failure the partial file (and any folder created for
    it) is removed and `target` is left unchanged."""

    def __init__(
        self, target: str | os.PathLike, suffix: str = "", what: str = "the output", mode: int = 0o644
    ) -> None:
        self.target = Path(target)
        self.suffix = suffix
        self.what = what
        self.mode = mode
        self._part: Path | None = None
        self.committed = False
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        """The partial file to write (there once the `with` block is entered)."""
        if self._part is None:
            raise RuntimeError("AtomicFile.path: enter the `with` block first")
        return self._part

    def __enter__(self) -> AtomicFile:
        refuse_input_as_output(self.target, self.what)
        try:
            self._created = make_parents(self.target)
        except OSError as exc:
            raise WriteError(
                f"{self.target}: cannot create {self.what} ({_os_reason(exc, self.target.parent)})"
            ) from None
        remove_stale_parts(self.target.parent)
        _install_signal_cleanup()
        token = secrets.token_hex(4)
        name = f"{PART_PREFIX}{os.getpid()}-{token}.part{self.suffix}"
        self._part = self.target.parent / name
        try:
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except OSError as exc:
            remove_folders(self._created)
            raise WriteError(
                f"{self.target}: cannot create {self.what} ({_os_reason(exc, self.target.parent)})"
            ) from None
        with _live_lock:
            _live_parts.add(str(self._part))
        return self

    def fail(self, exc: BaseException) -> WriteError:
        """The error to raise for a failed write into `path`, with the operating system's reason."""
        return WriteError(
            f"{self.target}: cannot write {self.what} ({_os_reason(exc, self.target.parent)}); "
            f"{'the previous file is unchanged' if self.target.exists() else 'nothing was written'}",
            exc.errno if isinstance(exc, OSError) else None,
        )

    def commit(self, verify: Callable[[Path], None] | None = None) -> None:
        """Check the written bytes, then rename over the target."""
        path = self.path
        try:
            size = path.stat().st_size
            if size == 0:
                raise OSError(
                    errno.ENOSPC if (_free_bytes(self.target.parent) or 1 << 30) < (1 << 20) else errno.EIO,
                    "the written file is empty",
                )
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            if verify is not None:
                verify(path)
            os.chmod(path, self.mode)
            refuse_input_as_output(self.target, self.what)
            os.replace(path, self.target)
        except TagsegError:  # a check that refused the file says why itself
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is a failed write
            raise self.fail(exc) from None
        self.committed = True
        with _live_lock:
            _live_parts.discard(str(path))
        fsync_dir(self.target.parent)

    def __exit__(self, *exc_info) -> None:
        if self._part is not None and not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self._part)
            with _live_lock:
                _live_parts.discard(str(self._part))
            remove_folders(self._created)


def atomic_write(
    target: str | os.PathLike,
    write: Callable[[Path], object],
    verify: Callable[[Path], None] | None = None,
    suffix: str = "",
    what: str = "the output",
    mode: int = 0o644,
) -> None:
    """`write(tmp)` then `verify(tmp)` then rename onto `target`; OS errors become a one-line WriteError."""
    with AtomicFile(target, suffix=suffix, what=what, mode=mode) as part:
        try:
            write(part.path)
        except TagsegError:
            raise
        except OSError as exc:
            raise part.fail(exc) from None
        part.commit(verify)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX only; best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, payload) -> None:
    """JSON next to its final name, checked, then renamed: a reader never sees half a file."""
    write_text_atomic(Path(path), json.dumps(payload, indent=1), what="the file")


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "the file", mode: int = 0o644) -> None:
    """UTF-8 text through `atomic_write`, read back and compared before the rename (newlines kept as given)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)

    def verify(tmp: Path) -> None:
        with open(tmp, encoding="utf-8", newline="") as stream:
            if stream.read() != text:
                raise OSError(errno.EIO, "the file read back differs from what was written")

    atomic_write(path, write, verify, suffix=path.suffix, what=what, mode=mode)


def replace_folder(work: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a finished folder written beside `final` (a temporary sibling) into place, durably: a reader sees
    the whole folder or none of it. `final` must not exist or be an empty folder."""
    final = Path(final)
    if final.exists():
        final.rmdir()
    os.replace(work, final)
    fsync_dir(final.parent)
