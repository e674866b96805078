"""The Slicer side of `tagseg serve`, driven from the main thread without ever blocking it.

Inside Slicer, PythonQt holds the GIL whenever the Qt event loop runs, so a Python thread only advances
while main-thread Python code runs: a worker thread (or a client thread waiting for its reply) crawls.
Everything here is therefore written as generator *tasks* that do a bounded piece of work and yield;
`TaskRunner.step(budget)` advances them from a timer callback (the Segment Editor effect's QTimer, or any
loop in tests) and returns within the budget:

- `http_exchange` speaks HTTP/1.1 on a non-blocking socket (send as much as the socket takes, read what
  has arrived, yield otherwise);
- `LocalEngine` starts `python -m tagseg serve --port 0 --token-file F --exit-with-stdin` as a child process
  (Slicer's PythonSlicer), reads its ready line without blocking and stops it with Slicer.

Only the standard library and `tagseg.client` (stdlib + numpy) are used: no Qt, so CI tests all of it.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from tagseg.client import reply_error, unframe
from tagseg.errors import EngineUnavailable, TagsegError, one_line

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 900.0  # a first prediction on a CPU may take minutes on a large volume
START_TIMEOUT_S = 180.0  # the engine process: imports, then the ready line
IO_GRACE_S = 0.003  # how long a tick may wait in select() for a socket that is about to be ready
SEND_CHUNK = 4 << 20
RECV_CHUNK = 1 << 20
MAX_REPLY_HEAD = 64 * 1024

# What a task yields: ("io", socket, "r" | "w", deadline) to wait for a socket, ("sleep", until) to wait for a
# time, ("cpu",) after a bounded piece of computation (the runner decides whether the tick has time left).
CPU = ("cpu",)


def sleep_until(until: float) -> tuple:
    return ("sleep", until)


class TaskRunner:
    """Runs generator tasks one after another, each `step()` for at most about `budget` seconds."""

    def __init__(self) -> None:
        self._task: Generator | None = None
        self._wait: tuple = CPU
        self._send: Any = None
        self._throw: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def waiting(self) -> tuple:
        """What the running task waits for (its last yield)."""
        return self._wait

    def start(self, task: Generator) -> None:
        if self._task is not None:
            raise RuntimeError("a task is already running")
        self._task, self._wait, self._send, self._throw = task, CPU, None, None

    def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.close()  # runs the task's finally blocks (sockets are closed)

    def step(self, deadline: float) -> tuple[bool, Any, BaseException | None]:
        """Advance the task until it finishes or `deadline` (perf_counter) passes while it waits.
        Returns (finished, result, error)."""
        while self._task is not None:
            now = time.perf_counter()
            kind = self._wait[0]
            if kind == "io":
                _, sock, mode, until = self._wait
                if now > until:
                    self._throw = TimeoutError("no answer in time")
                else:
                    grace = max(0.0, min(deadline - now, IO_GRACE_S))
                    try:
                        readable, writable, _ = select.select(
                            [sock] if mode == "r" else [], [sock] if mode == "w" else [], [], grace
                        )
                    except (OSError, ValueError) as exc:  # the socket was closed under us
                        self._throw = ConnectionError(str(exc))
                    else:
                        if not (readable or writable):
                            return False, None, None
            elif kind == "sleep":
                if now < self._wait[1]:
                    return False, None, None
            elif now > deadline:
                return False, None, None
            try:
                if self._throw is not None:
                    error, self._throw = self._throw, None
                    self._wait = self._task.throw(error)
                else:
                    self._wait = self._task.send(self._send)
                self._send = None
            except StopIteration as stop:
                self._task = None
                return True, stop.value, None
            except BaseException as exc:  # delivered to whoever waits for the task
                self._task = None
                return True, None, exc
        return False, None, None


SUBSTEP_S = 0.005  # how long `alongside` lets each of its tasks run per turn
SIDE_WAKE_S = 0.005  # how soon `alongside` looks at a running side task again


def alongside(main: Generator, side, every: float) -> Generator:
    """Task: run `main` to its end and return its result (or raise its error); meanwhile start `side()`, a
    short optional task (a progress query), `every` seconds, one at a time, on the same thread. The side
    task's own result and errors are dropped: it must record what it learns itself.

    Each task runs in a nested TaskRunner for a few milliseconds per turn; what this task yields to the outer
    runner is `main`'s wait, cut short when the side task is due: the TimeoutError the outer runner then
    throws in only wakes this loop (main's own deadline and socket errors reach `main` through its runner)."""
    main_runner, side_runner = TaskRunner(), TaskRunner()
    main_runner.start(main)
    next_side = time.perf_counter() + every
    try:
        while True:
            finished, result, error = main_runner.step(time.perf_counter() + SUBSTEP_S)
            if finished:
                if error is not None:
                    raise error
                return result
            now = time.perf_counter()
            if not side_runner.busy and now >= next_side:
                side_runner.start(side())
            if side_runner.busy:
                done, _, _ = side_runner.step(now + SUBSTEP_S)
                if done:
                    next_side = time.perf_counter() + every
            wake = time.perf_counter() + SIDE_WAKE_S if side_runner.busy else next_side
            wait = main_runner.waiting
            if wait[0] == "io":
                wait = ("io", wait[1], wait[2], min(wait[3], wake))
            elif wait[0] == "sleep":
                wait = sleep_until(min(wait[1], wake))
            try:
                yield wait
            except (TimeoutError, ConnectionError):
                pass  # our wake-up time, or main's deadline or closed socket, which its runner sees too
    finally:
        main_runner.close()
        side_runner.close()


# ---- HTTP on a non-blocking socket -----------------------------------------------------------------------
class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def _resolve(host: str, port: int) -> Generator:
    """getaddrinfo without blocking the caller: literal addresses directly, names on a helper thread (a DNS
    lookup waits in C with the GIL released, so it finishes even where Python threads starve)."""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    future: concurrent.futures.Future = concurrent.futures.Future()

    def lookup() -> None:
        try:
            future.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the task
            future.set_exception(exc)

    threading.Thread(target=lookup, name="tags-dns", daemon=True).start()
    deadline = time.perf_counter() + CONNECT_TIMEOUT_S
    while not future.done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the host name did not resolve in time")
        yield sleep_until(time.perf_counter() + 0.01)
    return future.result()


def http_exchange(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body_parts=(),
    reply_timeout: float = REPLY_TIMEOUT_S,
) -> Generator:
    """One HTTP/1.1 request on a new connection (`Connection: close`); returns a `Reply`. OSError and
    TimeoutError on a failed connection (the caller turns them into EngineUnavailable)."""
    infos = yield from _resolve(host, port)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)):
            raise OSError(code, os.strerror(code))
        yield ("io", sock, "w", time.perf_counter() + CONNECT_TIMEOUT_S)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise (ConnectionRefusedError if code == errno.ECONNREFUSED else OSError)(code, os.strerror(code))
        parts = [memoryview(p).cast("B") for p in body_parts]
        size = sum(p.nbytes for p in parts)
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Connection: close",
            "Accept: application/json, application/octet-stream",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if parts or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        send_error = None
        for part in (memoryview(head), *parts):
            offset = 0
            while offset < part.nbytes and send_error is None:
                try:
                    offset += sock.send(part[offset : offset + SEND_CHUNK])
                except (BlockingIOError, InterruptedError):
                    yield ("io", sock, "w", time.perf_counter() + reply_timeout)
                    continue
                except (BrokenPipeError, ConnectionResetError) as exc:
                    send_error = exc  # the server may have answered early (413: upload too large): read it
                    break
                yield CPU
        deadline = time.perf_counter() + reply_timeout
        data = bytearray()
        while b"\r\n\r\n" not in data:
            try:
                chunk = yield from _recv(sock, deadline)
            except OSError:
                if send_error is not None:
                    raise send_error from None
                raise
            if not chunk:
                raise send_error or ConnectionResetError("the connection closed before an answer")
            data += chunk
            if len(data) > MAX_REPLY_HEAD and b"\r\n\r\n" not in data[:MAX_REPLY_HEAD]:
                raise ConnectionError("reply headers too large")
        end = data.index(b"\r\n\r\n")
        head_lines = bytes(data[:end]).decode("latin-1").split("\r\n")
        body = data[end + 4 :]
        status_parts = head_lines[0].split(" ", 2)
        if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/") or not status_parts[1].isdigit():
            raise ConnectionError(f"not an HTTP reply: {head_lines[0][:80]!r}")
        reply_headers = {}
        for line in head_lines[1:]:
            name, _, value = line.partition(":")
            reply_headers[name.strip().lower()] = value.strip()
        length = reply_headers.get("content-length")
        if length is not None and length.isdigit():
            while len(body) < int(length):
                chunk = yield from _recv(sock, deadline)
                if not chunk:
                    raise ConnectionResetError("the connection closed in the middle of an answer")
                body += chunk
            body = body[: int(length)]
        else:
            while True:
                chunk = yield from _recv(sock, deadline)
                if not chunk:
                    break
                body += chunk
            if "chunked" in reply_headers.get("transfer-encoding", "").lower():
                body = _dechunk(body)
        return Reply(int(status_parts[1]), reply_headers, bytes(body))
    finally:
        sock.close()


def _recv(sock: socket.socket, deadline: float) -> Generator:
    while True:
        try:
            chunk = sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            yield ("io", sock, "r", deadline)
            continue
        if len(chunk) == RECV_CHUNK:
            yield CPU
        return chunk


def _dechunk(data: bytes | bytearray) -> bytearray:
    out, position = bytearray(), 0
    while True:
        line_end = data.index(b"\r\n", position)
        size = int(bytes(data[position:line_end]).split(b";")[0], 16)
        if size == 0:
            return out
        out += data[line_end + 2 : line_end + 2 + size]
        position = line_end + 4 + size


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: no server is listening"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "the connection closed before an answer: the server exited or was killed"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    return one_line(exc, 200, with_type=True)


class Endpoint:
    """Where an engine listens and the token it wants; `call` is a task returning (header, payload)."""

    def __init__(self, url: str, token: str | None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            from tagseg.errors import InputError

            raise InputError(f"engine URL {url!r}: expected http://HOST:PORT (for TLS use an SSH tunnel to 127.0.0.1)")
        self.url = f"http://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 80
        self.base = parts.path.rstrip("/")
        self.token = token or None

    @property
    def loopback(self) -> bool:
        from tagseg.client import is_loopback_host

        return is_loopback_host(self.host)

    def call(
        self,
        method: str,
        path: str,
        json_body: dict | None = None,
        body_parts=(),
        reply_timeout: float = REPLY_TIMEOUT_S,
    ) -> Generator:
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body_parts = [json.dumps(json_body, allow_nan=False, separators=(",", ":")).encode()]
            headers["Content-Type"] = "application/json"
        elif body_parts:
            headers["Content-Type"] = "application/octet-stream"
        try:
            reply = yield from http_exchange(
                self.host, self.port, method, self.base + path, headers, body_parts, reply_timeout
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise EngineUnavailable(
                f"the tagseg engine at {self.url} is not reachable ({describe_failure(exc)})"
            ) from None
        if 200 <= reply.status < 300:
            if reply.headers.get("content-type", "").startswith("application/octet-stream"):
                try:
                    return unframe(reply.body)
                except ValueError as exc:
                    raise TagsegError(f"engine at {self.url} sent a malformed reply ({exc})") from None
            try:
                obj = json.loads(reply.body or b"{}")
            except ValueError:
                obj = None
            return (obj if isinstance(obj, dict) else {}), b""
        raise reply_error(self.url, reply.status, reply.body)


# ---- the local engine process ----------------------------------------------------------------------------
def engine_python() -> str:
    """The Python that runs the engine: Slicer's PythonSlicer (the same interpreter and installed packages,
    without the GUI) inside Slicer, this interpreter elsewhere."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _tagseg_source() -> str:
    import tagseg

    return str(Path(tagseg.__file__).resolve().parents[1])


class LocalEngine:
    """A `tagseg serve` child process on loopback with a random token in a private file.

    `--exit-with-stdin` and the stdin pipe held here make it live exactly as long as this process (Slicer):
    a crash of Slicer closes the pipe and the server stops. `start()` returns at once: the process is spawned
    on a helper thread, because `Popen` waits until the child has exec'd (vfork), which on a loaded machine
    can take most of a second; `ready()` is a task that waits (without blocking) for the spawn and the ready
    line and returns the Endpoint."""

    def __init__(self, device: str = "auto", python: str | None = None, extra_args=()) -> None:
        self.device = device
        self.python = python
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.endpoint: Endpoint | None = None
        self.starts = 0
        self._folder: str | None = None
        self._token: str | None = None
        self._stdout = bytearray()
        self._log_path: Path | None = None
        self._started_at = 0.0
        self._spawn: concurrent.futures.Future | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def starting(self) -> bool:
        return self._spawn is not None

    def start(self) -> None:
        """Spawn the process (returns at once); a running or starting one is kept."""
        if self.alive() or self.starting:
            return
        self.stop()
        import secrets

        self._folder = tempfile.mkdtemp(prefix="tagseg-engine-")  # 0700: only this user can enter it
        token_path = Path(self._folder) / "token"
        self._token = secrets.token_urlsafe(32)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self._token + "\n")
        self._log_path = Path(self._folder) / "serve.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_tagseg_source(), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [
            self.python or engine_python(),
            "-m",
            "tagseg",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
            str(token_path),
            "--device",
            self.device,
            "--exit-with-stdin",
            *self.extra_args,
        ]
        log_path = self._log_path
        spawn: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        env=env,
                        close_fds=True,
                        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
                    )
                os.set_blocking(proc.stdout.fileno(), False)
                spawn.set_result(proc)
            except BaseException as exc:  # noqa: BLE001 - handed to ready()
                spawn.set_exception(exc)

        self._spawn = spawn
        self._stdout.clear()
        self.endpoint = None
        self.starts += 1
        self._started_at = time.perf_counter()
        threading.Thread(target=run, name="tags-engine-spawn", daemon=True).start()

    def _take_spawned(self) -> None:
        """Adopt the spawned process once the helper thread has it (EngineUnavailable if exec failed)."""
        spawn = self._spawn
        if spawn is None or not spawn.done():
            return
        self._spawn = None
        try:
            self.proc = spawn.result()
        except OSError as exc:
            raise EngineUnavailable(f"cannot start the engine process ({exc})") from None

    def log_tail(self, chars: int = 600) -> str:
        try:
            text = self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            return ""
        return " | ".join(line for line in text[-chars:].splitlines() if line.strip())

    def _read_ready_line(self) -> dict | None:
        try:
            while True:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._stdout += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass
        if b"\n" not in self._stdout:
            return None
        line = bytes(self._stdout).split(b"\n", 1)[0]
        try:
            ready = json.loads(line)
        except ValueError:
            raise EngineUnavailable(f"the engine process printed {line[:120]!r} instead of its ready line") from None
        return ready if isinstance(ready, dict) and "url" in ready else None

    def ready(self) -> Generator:
        """Task: the Endpoint once the server is listening; EngineUnavailable if it exits or takes too long."""
        if self.endpoint is not None and self.alive():
            return self.endpoint
        if not self.alive():
            self.start()
        while self.starting:
            self._take_spawned()
            if self.starting:
                if time.perf_counter() - self._started_at > START_TIMEOUT_S:
                    raise EngineUnavailable(f"the engine process did not start within {START_TIMEOUT_S:.0f} s")
                yield sleep_until(time.perf_counter() + 0.01)
        while True:
            ready = self._read_ready_line()
            if ready is not None:
                self.endpoint = Endpoint(str(ready["url"]), self._token)
                return self.endpoint
            if self.proc.poll() is not None:
                raise EngineUnavailable(
                    f"the engine process exited with code {self.proc.returncode} while "
                    f"starting: {self.log_tail() or 'no output'}"
                )
            if time.perf_counter() - self._started_at > START_TIMEOUT_S:
                self.stop()
                raise EngineUnavailable(f"the engine process did not start within {START_TIMEOUT_S:.0f} s")
            yield sleep_until(time.perf_counter() + 0.02)

    def stop(self, wait: float = 3.0) -> None:
        """Stop the process (stdin closed, then terminate, then kill) and delete the token folder."""
        spawn, self._spawn = self._spawn, None
        if spawn is not None:  # still spawning: stop the process as soon as it exists

            def reap(future) -> None:
                if future.exception() is None:
                    child = future.result()
                    child.stdin.close()
                    child.kill()

            spawn.add_done_callback(reap)
        proc, self.proc, self.endpoint = self.proc, None, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            if proc.poll() is None and wait <= 0:
                proc.kill()  # no waiting on the main thread; the zombie is reaped by subprocess later
            elif proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(wait)
                    except subprocess.TimeoutExpired:
                        pass
        folder, self._folder = self._folder, None
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
