"""TAGSSegmentLib.engine without a model: the non-blocking HTTP exchange, the task runner's time budget, and
the local engine process (a real `tagseg serve`, which loads no model until a session opens)."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from tagseg.errors import EngineUnavailable, InputError
from TAGSSegmentLib.engine import CPU, Endpoint, LocalEngine, TaskRunner, alongside


def run(task, timeout: float = 60.0, budget: float = 0.03):
    """Drive a task the way the effect's timer does; returns (result, longest step in seconds)."""
    runner, longest = TaskRunner(), 0.0
    runner.start(task)
    end = time.monotonic() + timeout
    while True:
        began = time.perf_counter()
        finished, result, error = runner.step(began + budget)
        longest = max(longest, time.perf_counter() - began)
        if finished:
            if error is not None:
                raise error
            return result, longest
        assert time.monotonic() < end, "the task did not finish"
        time.sleep(0.005)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b'{"a": ', b"1}"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        size = int(self.headers["Content-Length"])
        if self.path == "/limited":  # answer at once, without reading the body (like a 413)
            body = b'{"error": "PayloadTooLarge", "message": "too big"}'
            self.send_response(413)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        data = self.rfile.read(size)
        body = json.dumps({"received": len(data), "sum": sum(data[::4096])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_exchange_sends_the_token_and_parses_json_and_chunked_replies(http_server):
    endpoint = Endpoint(http_server, "tok-0123456789abcdef")
    reply, payload = run(endpoint.call("GET", "/v1/health"))[0]
    assert reply == {"path": "/v1/health", "auth": "Bearer tok-0123456789abcdef"} and payload == b""
    assert run(endpoint.call("GET", "/chunked"))[0] == ({"a": 1}, b"")


def test_a_large_upload_goes_in_bounded_steps(http_server):
    body = bytes(range(256)) * (24 * 4096)  # 24 MiB
    reply, longest = run(Endpoint(http_server, None).call("PUT", "/v1/volumes/x", body_parts=[b"head", body]))
    assert reply[0] == {"received": len(body) + 4, "sum": sum((b"head" + body)[::4096])}
    assert longest < 0.1


def test_an_early_refusal_during_an_upload_is_read_not_reported_as_a_dead_server(http_server):
    body = b"\0" * (64 << 20)
    with pytest.raises(InputError, match="refused an upload"):
        run(Endpoint(http_server, None).call("PUT", "/limited", body_parts=[body]))


def test_no_server_is_one_engine_unavailable_line():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EngineUnavailable, match="not reachable.*connection refused"):
        run(Endpoint(f"http://127.0.0.1:{port}", None).call("GET", "/v1/health"))
    with pytest.raises(InputError, match="expected http://HOST:PORT"):
        Endpoint("https://gpu-host:8765", "t")


def test_the_runner_returns_within_its_budget():
    def busy():
        for _ in range(20):
            time.sleep(0.01)  # a bounded piece of work
            yield CPU
        return "done"

    runner = TaskRunner()
    runner.start(busy())
    began = time.perf_counter()
    finished, _, _ = runner.step(began + 0.03)
    assert not finished and time.perf_counter() - began < 0.15  # the whole task takes 0.2 s
    assert run(busy())[0] == "done"


def test_a_side_task_runs_alongside_the_main_one_and_its_errors_are_dropped(http_server):
    """`alongside` (the engine logic's progress queries during a prediction): the side task runs, one at a
    time, while the main task is still waiting, on the same thread; a failing side task does not matter."""
    runs, endpoint = [], Endpoint(http_server, None)

    def side():
        runs.append(len(runs))
        if len(runs) == 1:
            raise ConnectionError("a failed progress query")
        reply, _ = yield from endpoint.call("GET", f"/side{len(runs)}")
        runs.append(reply["path"])

    def main():
        while "/side2" not in runs:  # waits for the side task's reply: it must have run meanwhile
            yield ("sleep", time.perf_counter() + 0.001)
        reply, _ = yield from endpoint.call("GET", "/main")
        return reply["path"]

    result, _ = run(alongside(main(), side, every=0.0))
    assert result == "/main" and runs[:3] == [0, 1, "/side2"]

    def failing():
        yield CPU
        raise ValueError("main failed")

    with pytest.raises(ValueError, match="main failed"):
        run(alongside(failing(), side, every=0.0))


def test_local_engine_starts_answers_and_stops_with_its_token_folder():
    engine = LocalEngine(device="cpu")
    try:
        endpoint, longest = run(engine.ready(), timeout=180)
        assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.loopback and engine.alive()
        token_file = Path(engine._folder) / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(engine._folder).stat().st_mode) == 0o700
        health = run(endpoint.call("GET", "/v1/health"))[0][0]
        assert health["ok"] and health["pid"] == engine.pid != os.getpid()
        with pytest.raises(EngineUnavailable, match="refused the token"):
            run(Endpoint(endpoint.url, "wrong-token-0123456789").call("GET", "/v1/health"))
        assert longest < 0.1
    finally:
        folder, proc = engine._folder, engine.proc
        engine.stop()
    assert proc.poll() is not None and not Path(folder).exists() and not engine.alive()


def test_a_local_engine_that_cannot_start_says_why(tmp_path):
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'no tagseg here' >&2\nexit 3\n", encoding="utf-8")
    script.chmod(0o755)
    engine = LocalEngine(python=str(script))
    try:
        with pytest.raises(EngineUnavailable, match="exited with code 3 while starting: no tagseg here"):
            run(engine.ready(), timeout=30)
    finally:
        engine.stop()
