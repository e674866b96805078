"""`tagseg serve` + `tagseg.client.RemoteSession`: a real server process with the real default model.

The server runs as a subprocess on loopback (`--port 0`); the in-process reference uses the module's
shared default backend. The phantom is three 64x64 slices cut around the tumour of a small synthetic
CT, so each image encoding costs three slices on the CPU.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tagseg import errors  # noqa: E402
from tagseg.client import (
    EngineClient,
    RemoteSession,
    encode_volume,
    engine_health,
    frame,  # noqa: E402
    prompt_json,
    volume_header,
    volume_id,
)
from tagseg.errors import DeviceError, EngineUnavailable, InputError, ModelError, PromptError  # noqa: E402
from tagseg.prompts import make_point  # noqa: E402
from tagseg.session import Session  # noqa: E402
from tagseg.synth import make_phantom  # noqa: E402
from tagseg.volume import Volume  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2]  # TAGSSegment/, where the tagseg package lives
START_TIMEOUT_S = 120
MAX_UPLOAD_MB = 1
TOKEN = "test-token-0123456789abcdef"


# ---- helpers --------------------------------------------------------------------------------------------
def slab(volume: Volume, k0: int, count: int = 3) -> Volume:
    """`count` slices of `volume` from slice k0, on the same physical grid."""
    matrix = np.array(volume.ijk_to_ras)
    matrix[:3, 3] = volume.kji_to_ras([[k0, 0, 0]])[0]
    return Volume(np.asarray(volume.array)[k0 : k0 + count], matrix, volume.name)


def start_server(tmp_path: Path, *extra: str, stdin=subprocess.DEVNULL):
    """A `tagseg serve` subprocess and its ready line; stderr goes to a file for diagnostics."""
    env = dict(os.environ, PYTHONPATH=str(SOURCE) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    log = open(tmp_path / f"serve-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagseg", "serve", "--device", "cpu", *extra],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not lines or not lines[0]:
        proc.kill()
        proc.wait()
        raise AssertionError(f"tagseg serve did not start: {Path(log.name).read_text(errors='replace')[-2000:]}")
    return proc, json.loads(lines[0])


def stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_request(url: str, method: str, path: str, body=b"", headers=None, token=TOKEN):
    """One exchange on a fresh connection: (status, content type, body)."""
    host, port = url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    all_headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    all_headers.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=all_headers)
        reply = conn.getresponse()
        return reply.status, reply.getheader("content-type", ""), reply.read()
    finally:
        conn.close()


def wait_running(url: str, token=TOKEN, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while engine_health(url, token)["running"] < 1:
        assert time.monotonic() < deadline, "the prediction never started"
        time.sleep(0.02)


# ---- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case():
    phantom = make_phantom(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
    k_centre = int(np.median(np.argwhere(np.asarray(phantom.label.array) > 0)[:, 0]))
    image, label = slab(phantom.image, k_centre - 1), slab(phantom.label, k_centre - 1)
    voxels = np.argwhere(np.asarray(label.array) > 0)
    rng = np.random.default_rng(0)
    clicks = [tuple(c) for c in label.kji_to_ras(voxels[rng.choice(len(voxels), 4, replace=False)])]
    # another slab (other voxels, same grid spacing) for a second image encoding
    other = slab(phantom.image, 0 if k_centre > 6 else 12)
    return type(
        "Case", (), dict(image=image, label=label, clicks=clicks, text=phantom.description, other=other, full=phantom)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    proc, ready = start_server(folder, "--token-file", str(token_file), "--max-upload-mb", str(MAX_UPLOAD_MB))
    yield type("Server", (), dict(proc=proc, url=ready["url"], ready=ready, folder=folder))
    stop(proc)


@pytest.fixture(scope="module")
def local(shared_backend, case):
    session = Session(case.image, device="cpu")
    yield session
    session.close()


# ---- the process ----------------------------------------------------------------------------------------
def test_ready_line_and_health(server):
    assert server.ready["pid"] == server.proc.pid
    assert server.ready["url"].startswith("http://127.0.0.1:")
    health = engine_health(server.url, TOKEN)
    assert health["ok"] and health["protocol"] == 1 and health["pid"] == server.proc.pid
    assert health["max_upload_bytes"] == MAX_UPLOAD_MB * 2**20


def test_remote_session_has_exactly_the_session_methods():
    def public(cls):
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    assert public(RemoteSession) == public(Session)
    assert {"set_text", "set_anatomy", "add_point", "add_box", "predict", "undo", "redo", "reset", "close"} <= public(
        RemoteSession
    )


def test_client_imports_only_the_standard_library_and_numpy():
    code = (
        "import sys, tagseg.client; heavy = {'torch', 'fastapi', 'uvicorn', 'starlette', 'pydantic', "
        "'scipy', 'SimpleITK', 'timm', 'onnxruntime'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(SOURCE)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- same results as in-process -------------------------------------------------------------------------
def test_masks_are_bit_identical_to_the_in_process_session(server, local, case):
    remote = RemoteSession(server.url, case.image, token=TOKEN, device="cpu")
    try:
        assert remote.device == "cpu"
        steps = [
            lambda s: s.set_text(case.text),
            lambda s: s.add_point(case.clicks[0]),
            lambda s: s.add_point(case.clicks[1]),
            lambda s: s.add_point(case.clicks[2], positive=False),
            lambda s: s.undo(),
            lambda s: s.redo(),
            lambda s: s.add_box(np.array(case.clicks[0]) - (10, 10, 2), np.array(case.clicks[0]) + (10, 10, 2)),
            lambda s: s.reset(),
            lambda s: s.set_text(case.text),
            lambda s: s.add_point(case.clicks[0]),  # the prompts of step 1 again: a cached result
        ]
        predicted = 0
        for index, step in enumerate(steps):
            assert step(remote) == step(local)
            if index in (0, 7, 8):  # text and reset alone: nothing to predict
                continue
            mine, theirs = remote.predict(), local.predict()
            predicted += 1
            assert mine.array.dtype == theirs.array.dtype == np.uint8
            assert np.array_equal(mine.array, theirs.array), f"masks differ after step {index}"
            assert mine.name == theirs.name and mine.same_grid(theirs)
            assert (mine.meta["model"], mine.meta["anatomy"]) == (theirs.meta["model"], theirs.meta["anatomy"])
            assert mine.meta["warnings"] == theirs.meta["warnings"] == list(remote.warnings)  # tagseg.checks
            assert "remote_overhead" in remote.timings and remote.timings["total"] >= remote.timings["engine_total"]
        assert predicted == len(steps) - 3
        # three slices cut through the tumour: the real result reaches the image's top and bottom, and says so
        assert "volume_border" in [w.code for w in remote.warnings]
        assert local.predict().array.any()
    finally:
        remote.close()


def test_anatomy_mask_gives_the_same_result(server, local, case):
    organ = case.full.organs[case.full.tumour_organ]
    remote = RemoteSession(server.url, case.image, token=TOKEN, device="cpu")
    try:
        for s in (remote, local):
            s.reset()
            s.set_text(case.text)
            s.set_anatomy(organ)  # on the 16-slice grid: resampled by the server / the Session
            s.add_point(case.clicks[0])
        assert np.array_equal(remote.predict().array, local.predict().array)
        with pytest.raises(PromptError, match="empty") as remote_error:
            remote.set_anatomy(organ.with_array(np.zeros(organ.shape_kji, np.uint8)))
        with pytest.raises(PromptError, match="empty") as local_error:
            local.set_anatomy(organ.with_array(np.zeros(organ.shape_kji, np.uint8)))
        assert str(remote_error.value) == str(local_error.value)
        with pytest.raises(PromptError):
            remote.set_anatomy("liver.nii.gz")
    finally:
        local.reset()
        remote.close()


def test_engine_errors_arrive_as_the_same_classes(server, case):
    with RemoteSession(server.url, case.image, token=TOKEN, device="cpu") as remote:
        with pytest.raises(PromptError, match="no prompt given"):
            remote.predict()  # raised by the server's Session
        remote.add_point(case.clicks[0], positive=False)
        with pytest.raises(PromptError, match="only exclude points"):
            remote.predict()
        with pytest.raises(PromptError, match="outside the volume"):
            remote.add_point((1e4, 0.0, 0.0))  # checked here, as Session does
        with pytest.raises(PromptError, match="finite"):
            remote.add_point((float("nan"), 0.0, 0.0))
    with RemoteSession(server.url, case.image, token=TOKEN, model="no-such-model", device="cpu") as remote:
        remote.add_point(case.clicks[0])
        with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
            remote.predict()
    with pytest.raises(DeviceError):
        RemoteSession(server.url, case.image, token=TOKEN, device="quantum")
    with pytest.raises(InputError, match="invalid geometry"):
        RemoteSession(server.url, Volume(np.zeros((2, 8, 8), np.int16), np.diag([0.0, 1.0, 1.0, 1.0])), token=TOKEN)


def test_a_wrong_token_or_no_server_is_engine_unavailable(server, case):
    with pytest.raises(EngineUnavailable, match="refused the token"):
        RemoteSession(server.url, case.image, token="wrong-token-wrong-token")
    with pytest.raises(EngineUnavailable, match="refused the token"):
        RemoteSession(server.url, case.image)
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(EngineUnavailable, match="not reachable") as failure:
        RemoteSession(f"http://127.0.0.1:{free}", case.image)
    assert time.monotonic() - start < 2.0
    assert "\n" not in str(failure.value)


def test_a_bigger_volume_than_the_server_accepts_is_an_input_error(server):
    big = Volume(np.ones((32, 128, 160), np.int16), np.eye(4))  # 1.25 MB > --max-upload-mb 1
    with pytest.raises(InputError, match="max-upload-mb"):
        RemoteSession(server.url, big, token=TOKEN)


# ---- malformed requests ---------------------------------------------------------------------------------
def _malformed_requests(server, case):
    """(label, method, path, body, headers, token) of requests the server must refuse with a 4xx."""
    vid, parts = encode_volume(case.image)
    good = b"".join(bytes(p) for p in parts)
    header = volume_header(case.image)
    raw = np.ascontiguousarray(case.image.array).tobytes()
    client = EngineClient(server.url, TOKEN)
    client.call("PUT", f"/v1/volumes/{vid}", body=parts)  # held by the server whichever tests ran before
    session = client.call("POST", "/v1/sessions", json_body={"volume": vid})[0]["session"]
    predict = f"/v1/sessions/{session}/predict"
    click = list(case.clicks[0])
    fresh = "12" * 32  # an id the server does not hold (a known one needs no body)
    json_type = {"Content-Type": "application/json"}

    def upload(head: dict, payload: bytes, name: str | None = None):
        head = dict(head)
        return ("PUT", f"/v1/volumes/{name or volume_id(head, payload)}", frame(head, payload), {}, TOKEN)

    def prompts(**fields):
        body = {"points": [{"ras": click, "positive": True}]}
        body.update(fields)
        return ("POST", predict, json.dumps(body).encode(), json_type, TOKEN)

    cases = {
        # the token
        "no token": ("GET", "/v1/health", b"", {}, None),
        "wrong token": ("GET", "/v1/health", b"", {}, "x" * len(TOKEN)),
        "token prefix": ("GET", "/v1/health", b"", {}, TOKEN[:-1]),
        "token longer": ("GET", "/v1/health", b"", {}, TOKEN + "x"),
        "basic scheme": ("GET", "/v1/health", b"", {"Authorization": f"Basic {TOKEN}"}, None),
        "no token on predict": ("POST", predict, b"{}", json_type, None),
        "no token on upload": ("PUT", f"/v1/volumes/{vid}", good, {}, None),
        "wrong token on sessions": (
            "POST",
            "/v1/sessions",
            json.dumps({"volume": vid}).encode(),
            json_type,
            "wrong-token-wrong-token",
        ),
        # routes
        "unknown route": ("GET", "/v1/nothing", b"", {}, TOKEN),
        "root": ("GET", "/", b"", {}, TOKEN),
        "wrong method": ("DELETE", "/v1/health", b"", {}, TOKEN),
        "predict by GET": ("GET", predict, b"", {}, TOKEN),
        # bad JSON
        "empty body": ("POST", "/v1/sessions", b"", json_type, TOKEN),
        "truncated JSON": ("POST", "/v1/sessions", b'{"volume": ', json_type, TOKEN),
        "JSON list": ("POST", "/v1/sessions", b"[]", json_type, TOKEN),
        "JSON null": ("POST", "/v1/sessions", b"null", json_type, TOKEN),
        "JSON string": ("POST", "/v1/sessions", b'"volume"', json_type, TOKEN),
        "single quotes": ("POST", "/v1/sessions", b"{'volume': 1}", json_type, TOKEN),
        "not UTF-8": ("POST", "/v1/sessions", b"\xff\xfe\x00{", json_type, TOKEN),
        "deep nesting": ("POST", "/v1/sessions", b"[" * 100000 + b"]" * 100000, json_type, TOKEN),
        "NaN literal": ("POST", "/v1/sessions", b'{"volume": NaN}', json_type, TOKEN),
        "JSON over 1 MB": ("POST", predict, b'{"text": "' + b"a" * (1 << 20) + b'"}', json_type, TOKEN),
        # sessions
        "volume not a string": ("POST", "/v1/sessions", b'{"volume": 5}', json_type, TOKEN),
        "volume id malformed": ("POST", "/v1/sessions", b'{"volume": "../../etc"}', json_type, TOKEN),
        "volume unknown": ("POST", "/v1/sessions", json.dumps({"volume": "ab" * 32}).encode(), json_type, TOKEN),
        "model not a string": (
            "POST",
            "/v1/sessions",
            json.dumps({"volume": vid, "model": 3}).encode(),
            json_type,
            TOKEN,
        ),
        "model too long": (
            "POST",
            "/v1/sessions",
            json.dumps({"volume": vid, "model": "m" * 5000}).encode(),
            json_type,
            TOKEN,
        ),
        "device unknown": (
            "POST",
            "/v1/sessions",
            json.dumps({"volume": vid, "device": "quantum"}).encode(),
            json_type,
            TOKEN,
        ),
        "session volume null": ("POST", "/v1/sessions", json.dumps({"volume": None}).encode(), json_type, TOKEN),
        "anatomy volume null": (
            "POST",
            f"/v1/sessions/{session}/anatomy",
            json.dumps({"volume": None}).encode(),
            json_type,
            TOKEN,
        ),
        "unknown session": ("POST", f"/v1/sessions/{'0' * 32}/predict", b"{}", json_type, TOKEN),
        "session id path": ("POST", "/v1/sessions/..%2F..%2Fetc/predict", b"{}", json_type, TOKEN),
        "close unknown session": ("DELETE", f"/v1/sessions/{'1' * 32}", b"", {}, TOKEN),
        "anatomy unknown volume": (
            "POST",
            f"/v1/sessions/{session}/anatomy",
            json.dumps({"volume": "cd" * 32}).encode(),
            json_type,
            TOKEN,
        ),
        # prompts
        "NaN coordinate literal": ("POST", predict, b'{"points": [{"ras": [NaN, 0, 0]}]}', json_type, TOKEN),
        "Infinity literal": ("POST", predict, b'{"points": [{"ras": [Infinity, 0, 0]}]}', json_type, TOKEN),
        "overflowing coordinate": ("POST", predict, b'{"points": [{"ras": [1e999, 0, 0]}]}', json_type, TOKEN),
        "points not a list": prompts(points="here"),
        "point not an object": prompts(points=[click]),
        "two coordinates": prompts(points=[{"ras": click[:2]}]),
        "string coordinate": prompts(points=[{"ras": [str(v) for v in click]}]),
        "boolean coordinate": prompts(points=[{"ras": [True, 0, 0]}]),
        "positive not a boolean": prompts(points=[{"ras": click, "positive": "yes"}]),
        "point outside": prompts(points=[{"ras": [1e4, 0.0, 0.0]}]),
        "no prompt": prompts(points=[]),
        "only exclude points": prompts(points=[{"ras": click, "positive": False}]),
        "too many points": prompts(points=[{"ras": click}] * 1001),
        "boxes not a list": prompts(boxes={"a": click}),
        "box without b": prompts(boxes=[{"a": click}]),
        "zero-size box": prompts(boxes=[{"a": click, "b": click}]),
        "text not a string": prompts(text=["liver"]),
        "text too long": prompts(text="t" * 5000),
        "anatomy unknown": prompts(anatomy="ef" * 32),
        "anatomy not a string": prompts(anatomy=7),
        # uploads
        "upload id malformed": ("PUT", "/v1/volumes/xyz", good, {}, TOKEN),
        "upload not a frame": ("PUT", f"/v1/volumes/{fresh}", b"GIF89a" + b"\0" * 100, {}, TOKEN),
        "upload empty": ("PUT", f"/v1/volumes/{fresh}", b"", {}, TOKEN),
        "frame header too long": ("PUT", f"/v1/volumes/{fresh}", b"TGS1\xff\xff\xff\xff{}", {}, TOKEN),
        "frame header not JSON": ("PUT", f"/v1/volumes/{fresh}", b"TGS1\x00\x00\x00\x03abc", {}, TOKEN),
        "object dtype": upload(dict(header, dtype="|O"), raw),
        "string dtype": upload(dict(header, dtype="<U4"), raw),
        "dtype not a string": upload(dict(header, dtype=5), raw),
        "two dimensions": upload(dict(header, shape=header["shape"][:2]), raw),
        "zero dimension": upload(dict(header, shape=[0, 64, 64]), b""),
        "negative dimension": upload(dict(header, shape=[-3, 64, 64]), raw),
        "boolean dimension": upload(dict(header, shape=[True, 64, 64]), raw),
        "huge dimension": upload(dict(header, shape=[100000, 100000, 100000]), raw),
        "short payload": upload(header, raw[:-2]),
        "long payload": upload(header, raw + b"\0\0"),
        "matrix 3x4": upload(dict(header, ijk_to_ras=header["ijk_to_ras"][:3]), raw),
        "matrix strings": upload(dict(header, ijk_to_ras=[["1"] * 4] * 4), raw),
        "hash mismatch": upload(header, raw, name="0" * 64),
        "unknown encoding": upload(dict(header, encoding="gzip"), raw),
        "corrupt zlib": upload(dict(header, encoding="zlib"), b"\x78\x9c" + b"garbage" * 10),
        "zlib bomb": upload(dict(header, encoding="zlib"), zlib.compress(raw + b"\0" * (4 << 20))),
        "sheared grid": upload(dict(header, ijk_to_ras=[[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), raw),
        "all-NaN volume": upload(
            dict(header, dtype="<f4"), np.full(case.image.shape_kji, np.nan, np.float32).tobytes()
        ),
        "volume over the limit": upload(dict(header, shape=[64, 128, 128]), raw),
        "Content-Length 10 GB": ("PUT", f"/v1/volumes/{vid}", None, {"Content-Length": str(10 << 30)}, TOKEN),
    }
    return cases


def test_malformed_requests_get_one_line_json_4xx_and_the_server_keeps_serving(server, case):
    cases = _malformed_requests(server, case)
    assert len(cases) >= 50
    statuses = {}
    for label, (method, path, body, headers, token) in cases.items():
        if body is None:  # headers announce a body that is never sent
            host, port = server.url.split("//")[1].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.putrequest(method, path)
            for key, value in dict(headers, Authorization=f"Bearer {token}").items():
                conn.putheader(key, value)
            conn.endheaders()
            reply = conn.getresponse()
            status, kind, data = reply.status, reply.getheader("content-type", ""), reply.read()
            conn.close()
        else:
            status, kind, data = raw_request(server.url, method, path, body, headers, token)
        statuses[label] = status
        assert 400 <= status < 500, f"{label}: HTTP {status} {data[:200]!r}"
        assert kind.startswith("application/json"), f"{label}: {kind}"
        text = data.decode()
        assert "\n" not in text.strip(), f"{label}: more than one line"
        reply = json.loads(text)
        assert isinstance(reply["error"], str) and reply["error"] and isinstance(reply["message"], str), label
    assert statuses["no token"] == statuses["wrong token"] == 401
    assert statuses["unknown session"] == 404 and statuses["point outside"] == 422
    assert statuses["volume over the limit"] == statuses["Content-Length 10 GB"] == 413
    assert statuses["session volume null"] == statuses["anatomy volume null"] == 400  # was a TypeError, 500
    # still serving: health and a real prediction
    assert engine_health(server.url, TOKEN)["ok"]
    with RemoteSession(server.url, case.image, token=TOKEN, device="cpu") as remote:
        remote.set_text(case.text)
        remote.add_point(case.clicks[0])
        assert remote.predict().array.any()


# ---- newest wins ----------------------------------------------------------------------------------------
def test_a_superseded_prediction_is_dropped(server, case):
    """A runs (a first encoding of a new image); B waits; C arrives: B is answered 409 Superseded."""
    image = case.other
    client = EngineClient(server.url, TOKEN)
    vid, parts = encode_volume(image)
    client.call("PUT", f"/v1/volumes/{vid}", body=parts)
    sid = client.call("POST", "/v1/sessions", json_body={"volume": vid, "device": "cpu"})[0]["session"]
    centre = image.kji_to_ras([[1, 32, 32]])[0]
    text = case.text
    outcomes: dict[str, object] = {}

    def send(name: str, offset_mm: float) -> None:
        point = make_point(image, centre + np.array([offset_mm, 0.0, 0.0]))
        try:
            header, _ = client.call(
                "POST", f"/v1/sessions/{sid}/predict", json_body=prompt_json([point], [], text, None)
            )
            outcomes[name] = header
        except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
            outcomes[name] = exc

    threads = {"A": threading.Thread(target=send, args=("A", 0.0))}
    threads["A"].start()
    wait_running(server.url)
    for name, offset in (("B", 4.0), ("C", -4.0)):
        threads[name] = threading.Thread(target=send, args=(name, offset))
        threads[name].start()
        time.sleep(0.3)
    for thread in threads.values():
        thread.join(300)
    assert isinstance(outcomes["A"], dict) and outcomes["A"]["shape"] == list(image.shape_kji)
    assert isinstance(outcomes["B"], errors.Superseded), outcomes["B"]
    assert isinstance(outcomes["C"], dict), outcomes["C"]
    client.call("DELETE", f"/v1/sessions/{sid}")
    client.close()


# ---- a killed server ------------------------------------------------------------------------------------
def test_sigkill_mid_prediction_is_engine_unavailable_and_a_restart_serves_the_next_click(tmp_path, local, case):
    proc, ready = start_server(tmp_path)
    port = ready["url"].rsplit(":", 1)[1]
    remote = RemoteSession(ready["url"], case.image, device="cpu")
    try:
        remote.set_text(case.text)
        remote.add_point(case.clicks[0])
        outcome: dict[str, object] = {}

        def click() -> None:
            try:
                outcome["result"] = remote.predict()
            except Exception as exc:  # noqa: BLE001
                outcome["result"] = exc
            outcome["at"] = time.monotonic()

        worker = threading.Thread(target=click)
        worker.start()
        wait_running(ready["url"], token=None)  # the first prediction loads the model: seconds
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        worker.join(10)
        proc.wait(10)
        assert isinstance(outcome.get("result"), EngineUnavailable), outcome.get("result")
        assert outcome["at"] - killed_at < 2.0
        message = str(outcome["result"])
        assert "\n" not in message and ready["url"] in message

        restarted, ready2 = start_server(tmp_path, "--port", port)
        try:
            assert ready2["url"] == ready["url"]
            remote.add_point(case.clicks[1])  # the next click: the session is opened again
            after_restart = remote.predict().array
            # the restarted engine has no earlier result to correct, so it computes from all prompts at
            # once: the reference is the in-process model doing the same (`incremental` off)
            backend = local._backend(local.backend_name())[0]
            backend.options.incremental = False
            try:
                with Session(case.image, model=local.model, device="cpu") as fresh:
                    fresh.set_text(case.text)
                    fresh.add_point(case.clicks[0])
                    fresh.add_point(case.clicks[1])
                    reference = fresh.predict().array
            finally:
                backend.options.incremental = True
            # not bit-compared: the restarted engine decodes these boxes in other batches than the
            # in-process backend did (its decode cache remembers this module's earlier clicks)
            overlap = 2.0 * np.count_nonzero((after_restart > 0) & (reference > 0))
            assert overlap / max(np.count_nonzero(after_restart) + np.count_nonzero(reference), 1) > 0.95
        finally:
            stop(restarted)
    finally:
        remote.close()
        stop(proc)
        local.reset()


# ---- the command line -----------------------------------------------------------------------------------
def _serve(*args: str, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "tagseg", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(SOURCE)),
    )


def test_a_public_address_without_a_token_is_refused(tmp_path):
    out = _serve("--host", "0.0.0.0")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "without a token" in out.stderr
    short = tmp_path / "short"
    short.write_text("abc\n", encoding="utf-8")
    out = _serve("--host", "0.0.0.0", "--token-file", str(short))
    assert out.returncode == 2 and "at least 16 characters" in out.stderr


def test_a_missing_token_file_gets_a_private_random_token(tmp_path):
    token_file = tmp_path / "new-token"
    proc, ready = start_server(tmp_path, "--token-file", str(token_file), stdin=subprocess.PIPE)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
        assert len(token) >= 32 and (token_file.stat().st_mode & 0o077) == 0
        assert ready["token"] is True
        assert engine_health(ready["url"], token)["ok"]
        with pytest.raises(EngineUnavailable, match="refused the token"):
            engine_health(ready["url"], None)
        proc.stdin.close()  # no --exit-with-stdin: closing stdin does not stop it
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        stop(proc)


def test_exit_with_stdin_stops_with_its_parent(tmp_path):
    proc, ready = start_server(tmp_path, "--exit-with-stdin", stdin=subprocess.PIPE)
    try:
        assert engine_health(ready["url"])["ok"]
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        stop(proc)
