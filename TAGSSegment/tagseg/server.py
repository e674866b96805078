"""`tagseg serve`: the engine in its own process, over HTTP (FastAPI on uvicorn).

3D Slicer starts one on loopback with a random token and talks to it with `tagseg.client` (standard
library only); a GPU machine can run one for remote users (a token is then required). The wire
format is described in `tagseg.client`. Endpoints (all under /v1, all behind the token):

    GET    /v1/health                        protocol, version, device, sessions, limits
    GET    /v1/volumes/{id}                  404 UnknownVolume until uploaded
    PUT    /v1/volumes/{id}                  a volume frame; the id must be its content hash
    POST   /v1/sessions                      {"volume", "model", "device"} -> {"session", "device"}
    DELETE /v1/sessions/{sid}
    POST   /v1/sessions/{sid}/anatomy        {"volume": id} organ mask, resampled and checked once
    POST   /v1/sessions/{sid}/predict        prompts -> mask frame (cropped to its box, zlib) + timings + warnings
    GET    /v1/sessions/{sid}/progress       {"stage", "done", "total", "running"}: the latest progress report
    POST   /v1/sessions/{sid}/propose        prompts -> {"ras": [r, a, s]} (TAGS text-only start)
    POST   /v1/sessions/{sid}/backend        prompts -> {"name"} (the model "auto" resolves to)

Each session wraps a `tagseg.Session` (prompts, result cache; models are shared between sessions).
A predict request that is still waiting when a newer one for the same session arrives is answered
409 Superseded (newest wins). Nothing is unpickled; every size is bounded before it is read.
"""

import asyncio
import hmac
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import prompts as P
from .client import MAX_FRAME_HEADER, PROTOCOL, WIRE_DTYPES, encode_mask, frame, is_loopback_host, unframe, volume_id
from .errors import DeviceError, InputError, Superseded, TagsegError, one_line
from .fs import write_text_atomic
from .text import parse_description
from .volume import Volume, check_volume

if TYPE_CHECKING:  # the model code is imported when the app is built (create_app)
    from .session import Session

MAX_JSON_BYTES = 1 << 20
MAX_POINTS = 1000
MAX_BOXES = 100
MAX_TEXT_CHARS = 1000
MAX_MODEL_CHARS = 4096
MAX_DIM = 8192
MAX_SESSIONS = 32
SPARE_VOLUMES = 4  # uploaded volumes kept without a session using them
RESULTS_PER_SESSION = 16  # full-grid masks a session keeps for undo/redo
MIN_TOKEN_CHARS = 16
_ID = re.compile(r"^[0-9a-f]{64}$")
_SID = re.compile(r"^[0-9a-f]{32}$")


class Reject(Exception):
    """A request the server refuses: HTTP status, error name and a one-line message."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


# ---- engine state --------------------------------------------------------------------------------------
@dataclass
class LiveSession:
    sid: str
    session: "Session"  # only imported for type checking: the model code loads in create_app
    volume_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    arrivals: int = 0
    anatomies: dict = field(default_factory=dict)  # volume id -> (on-grid mask Volume, key)
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    progress: "ProgressBox | None" = None


class ProgressBox:
    """The latest progress(stage, done, total) of a session's model thread, for clients to poll."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._state = {"stage": str(stage), "done": int(done), "total": int(total)}

    def clear(self) -> None:
        with self._lock:
            self._state = {}

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._state)


class Engine:
    """Volumes by content hash, sessions by random id; bounded in number."""

    def __init__(self, device: str, token: str | None, max_upload_bytes: int, warn=None) -> None:
        self.device = device
        self.token = token
        self.max_upload_bytes = int(max_upload_bytes)
        self.volumes: OrderedDict[str, Volume] = OrderedDict()
        self.sessions: OrderedDict[str, LiveSession] = OrderedDict()
        self.running = 0
        self.served = 0
        self._warn = warn

    # auth: a constant-time comparison of the whole header value
    def check_token(self, header: str | None) -> None:
        if self.token is None:
            return
        expected = f"Bearer {self.token}".encode()
        given = (header or "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise Reject(401, "Unauthorized", "missing or wrong token (send Authorization: Bearer TOKEN)")

    def volume(self, vid: str) -> Volume:
        if not _ID.match(vid):
            raise Reject(400, "BadRequest", "a volume id is 64 lower-case hex digits (SHA-256)")
        if vid not in self.volumes:
            raise Reject(404, "UnknownVolume", f"volume {vid[:12]} is not on this server; upload it first")
        self.volumes.move_to_end(vid)
        return self.volumes[vid]

    def live(self, sid: str) -> LiveSession:
        live = self.sessions.get(sid) if _SID.match(sid) else None
        if live is None or live.closed:
            raise Reject(404, "UnknownSession", "no such session on this server (closed, evicted or restarted)")
        live.last_used = time.monotonic()
        self.sessions.move_to_end(sid)
        return live

    def add_volume(self, vid: str, volume: Volume) -> None:
        self.volumes[vid] = volume
        self.volumes.move_to_end(vid)
        used = {live.volume_id for live in self.sessions.values()}
        used.update(a for live in self.sessions.values() for a in live.anatomies)
        spare = [v for v in self.volumes if v not in used and v != vid]
        for old in spare[: max(len(spare) - SPARE_VOLUMES, 0)]:
            del self.volumes[old]

    def evict_sessions(self) -> list:
        """Sessions to close so a new one fits: least recently used first, never a busy one."""
        out = []
        for sid, live in list(self.sessions.items()):
            if len(self.sessions) < MAX_SESSIONS:
                break
            if not live.lock.locked():
                live.closed = True
                del self.sessions[sid]
                out.append(live)
        if len(self.sessions) >= MAX_SESSIONS:
            raise Reject(429, "Busy", f"{MAX_SESSIONS} sessions are busy on this server; try again later")
        return out


# ---- request parsing -----------------------------------------------------------------------------------
async def read_body(request, limit: int) -> bytearray:
    """The request body, refused (413) as soon as it would exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reject(400, "BadRequest", "Content-Length is not a number")
        if int(declared) > limit:
            raise Reject(413, "PayloadTooLarge", f"the body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Reject(413, "PayloadTooLarge", f"the body is larger than the limit of {limit} bytes")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes | bytearray) -> dict:
    try:
        obj = json.loads(bytes(body), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Reject(400, "BadRequest", f"the body is not valid JSON ({one_line(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise Reject(400, "BadRequest", "the body must be a JSON object")
    return obj


def _string(obj: dict, key: str, default: str | None, limit: int) -> str | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise Reject(400, "BadRequest", f"'{key}' must be a string of at most {limit} characters")
    return value


def _volume_id(obj: dict) -> str:
    """The request's "volume": a 400 unless it is a volume id (a JSON null included)."""
    vid = _string(obj, "volume", "", 64)
    if vid is None or not _ID.match(vid):
        raise Reject(400, "BadRequest", "a volume id is 64 lower-case hex digits (SHA-256)")
    return vid


def _vector(value, what: str) -> list[float]:
    """Three JSON numbers; finiteness is checked by the prompt code (PromptError, as in-process)."""
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise Reject(400, "BadRequest", f"{what} must be a list of three numbers R, A, S")
    return [float(v) for v in value]


def prompt_set(live: LiveSession, request: dict) -> P.PromptSet:
    """The prompts of a request as a PromptSet on the session's volume (the checks `Session` makes)."""
    volume = live.session.volume
    points_in, boxes_in = request.get("points", []), request.get("boxes", [])
    if not isinstance(points_in, list) or len(points_in) > MAX_POINTS:
        raise Reject(400, "BadRequest", f"'points' must be a list of at most {MAX_POINTS} points")
    if not isinstance(boxes_in, list) or len(boxes_in) > MAX_BOXES:
        raise Reject(400, "BadRequest", f"'boxes' must be a list of at most {MAX_BOXES} boxes")
    points = []
    for item in points_in:
        if not isinstance(item, dict) or not isinstance(item.get("positive", True), bool):
            raise Reject(400, "BadRequest", 'each point is {"ras": [r, a, s], "positive": true|false}')
        points.append(P.make_point(volume, _vector(item.get("ras"), "a point's 'ras'"), item.get("positive", True)))
    boxes = []
    for item in boxes_in:
        if not isinstance(item, dict):
            raise Reject(400, "BadRequest", 'each box is {"a": [r, a, s], "b": [r, a, s]}')
        boxes.append(
            P.make_box(volume, _vector(item.get("a"), "a box corner 'a'"), _vector(item.get("b"), "a box corner 'b'"))
        )
    text = parse_description(_string(request, "text", "", MAX_TEXT_CHARS)).text
    anatomy_id = _string(request, "anatomy", None, 64)
    anatomy, key = None, ""
    if anatomy_id is not None:
        if anatomy_id not in live.anatomies:
            raise Reject(404, "UnknownAnatomy", "this session has no such anatomy mask; send it to /anatomy first")
        anatomy, key = live.anatomies[anatomy_id]
    return P.PromptSet(tuple(points), tuple(boxes), text, anatomy, key)


def parse_volume(vid: str, body: bytearray, max_bytes: int) -> Volume:
    """A Volume from an upload frame; its content must hash to `vid`."""
    try:
        header, payload = unframe(body)
    except ValueError as exc:
        raise Reject(400, "BadRequest", f"the upload is not a volume frame ({exc})") from None
    dtype_name = header.get("dtype")
    if dtype_name not in WIRE_DTYPES:
        raise Reject(400, "BadRequest", f"unsupported voxel type {str(dtype_name)[:20]!r}")
    dtype = np.dtype(dtype_name)
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_DIM for n in shape)
    ):
        raise Reject(400, "BadRequest", f"'shape' must be three sizes from 1 to {MAX_DIM}")
    matrix = header.get("ijk_to_ras")
    if (
        not isinstance(matrix, list)
        or len(matrix) != 4
        or not all(isinstance(r, list) and len(r) == 4 for r in matrix)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in matrix for v in r)
    ):
        raise Reject(400, "BadRequest", "'ijk_to_ras' must be a 4x4 list of numbers")
    expected = int(np.prod(shape)) * dtype.itemsize
    if expected > max_bytes:
        raise Reject(413, "PayloadTooLarge", f"the volume has {expected} bytes; the limit is {max_bytes}")
    encoding = header.get("encoding", "raw")
    raw: bytes | memoryview
    if encoding == "zlib":
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(payload, expected + 1)
        except zlib.error as exc:
            raise Reject(400, "BadRequest", f"the zlib payload is corrupt ({exc})") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise Reject(400, "BadRequest", "the zlib payload does not inflate to dtype x shape bytes")
    elif encoding == "raw":
        raw = payload
    else:
        raise Reject(400, "BadRequest", "'encoding' must be 'raw' or 'zlib'")
    if len(raw) != expected:
        raise Reject(400, "BadRequest", f"the payload has {len(raw)} bytes; dtype and shape need {expected}")
    if volume_id(header, raw) != vid:
        raise Reject(400, "BadRequest", "the content does not hash to the volume id in the URL")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if not array.flags.aligned:
        # the voxels start after a JSON header of any length: unaligned, every numpy pass over them (crops,
        # intensity statistics on each click) runs about 2x slower, so they get their own aligned copy once
        array = array.copy()
    try:
        volume = Volume(array, np.array(matrix, dtype=np.float64), name=_string(header, "name", "", 200) or "")
    except ValueError as exc:
        raise Reject(400, "BadRequest", one_line(exc)) from None
    check_volume(volume)
    return volume


# ---- model work (runs on a worker thread) --------------------------------------------------------------
def _engine_errors(fn):
    """Out-of-memory and other device failures as DeviceError, like the command line reports them."""

    def run(*args):
        try:
            return fn(*args)
        except TagsegError:
            raise
        except MemoryError:
            raise DeviceError("the engine ran out of memory (RAM); crop the image or use a larger machine") from None
        except Exception as exc:
            from .devices import is_out_of_memory

            if is_out_of_memory(exc):
                raise DeviceError(
                    "the device ran out of memory while running the model; restart the engine "
                    "with --device cpu or free GPU memory"
                ) from None
            raise

    return run


def _use_prompts(session, prompts: P.PromptSet) -> None:
    # The prompts arrive whole and already checked; the session's undo history is the client's business.
    session.reset()
    session._push(prompts)


@_engine_errors
def _predict(session, prompts: P.PromptSet):
    _use_prompts(session, prompts)
    if isinstance(session.progress, ProgressBox):
        session.progress.clear()
    result = session.predict()
    cache = session._results
    while len(cache) > RESULTS_PER_SESSION:  # bounded memory: oldest cached masks go first
        cache.pop(next(iter(cache)))
    start = time.perf_counter()
    head, payload = encode_mask(result.array)
    head.update(
        name=result.name,
        meta={"model": result.meta.get("model"), "anatomy": result.meta.get("anatomy")},
        warnings=[w.to_dict() for w in result.meta.get("warnings", ())],
    )
    timings = dict(session.timings, encode=time.perf_counter() - start)
    return head, payload, timings


@_engine_errors
def _propose(session, prompts: P.PromptSet):
    _use_prompts(session, prompts)
    return session.propose_point()


@_engine_errors
def _anatomy(session, mask: Volume):
    session.reset()
    session.set_anatomy(mask)
    prompts = session.prompts
    session.reset()
    return prompts.anatomy, prompts.anatomy_key


# ---- the application -----------------------------------------------------------------------------------
def build_app(engine: Engine):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__
    from .session import Session

    app = FastAPI(title="tagseg engine", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, name: str, message: str):
        return JSONResponse({"error": name, "message": one_line(message)[:1000]}, status_code=status)

    @app.exception_handler(Reject)
    async def _reject(request, exc: Reject):
        return error(exc.status, exc.name, exc.message)

    @app.exception_handler(Superseded)
    async def _superseded(request, exc: Superseded):
        return error(409, "Superseded", str(exc))

    @app.exception_handler(TagsegError)
    async def _engine_error(request, exc: TagsegError):
        return error(422, type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        return error(exc.status_code, names.get(exc.status_code, "BadRequest"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error(400, "BadRequest", "malformed request")

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        return error(500, "InternalError", f"{type(exc).__name__}: {exc} (see the server's log)")

    def auth(request: Request) -> None:
        engine.check_token(request.headers.get("authorization"))

    async def json_request(request: Request) -> dict:
        return parse_json(await read_body(request, MAX_JSON_BYTES))

    @app.get("/v1/health")
    async def health(request: Request):
        auth(request)
        return {
            "ok": True,
            "protocol": PROTOCOL,
            "version": __version__,
            "device": engine.device,
            "pid": os.getpid(),
            "sessions": len(engine.sessions),
            "volumes": len(engine.volumes),
            "running": engine.running,
            "served": engine.served,
            "max_upload_bytes": engine.max_upload_bytes,
        }

    @app.get("/v1/volumes/{vid}")
    async def volume_info(vid: str, request: Request):
        auth(request)
        vol = engine.volume(vid)
        return {"volume": vid, "shape": list(vol.shape_kji), "dtype": vol.array.dtype.str}

    @app.put("/v1/volumes/{vid}")
    async def upload(vid: str, request: Request):
        auth(request)
        if not _ID.match(vid):
            raise Reject(400, "BadRequest", "a volume id is 64 lower-case hex digits (SHA-256)")
        body = await read_body(request, engine.max_upload_bytes + MAX_FRAME_HEADER + 8)
        volume = await asyncio.to_thread(parse_volume, vid, body, engine.max_upload_bytes)  # checked even if known
        if vid not in engine.volumes:
            engine.add_volume(vid, volume)
        return {"volume": vid}

    @app.post("/v1/sessions")
    async def open_session(request: Request):
        auth(request)
        req = await json_request(request)
        vid = _volume_id(req)
        model = _string(req, "model", "auto", MAX_MODEL_CHARS) or "auto"
        device = _string(req, "device", "auto", 32) or "auto"
        volume = engine.volume(vid)
        warnings: list[str] = []
        use_device = engine.device if device.lower() == "auto" else device
        box = ProgressBox()
        session = await asyncio.to_thread(lambda: Session(volume, model, use_device, warnings.append, progress=box))
        for old in engine.evict_sessions():
            await asyncio.to_thread(old.session.close)
        sid = uuid.uuid4().hex
        engine.sessions[sid] = LiveSession(sid, session, vid, progress=box)
        return {"session": sid, "device": session.device, "warnings": warnings}

    @app.delete("/v1/sessions/{sid}")
    async def close_session(sid: str, request: Request):
        auth(request)
        live = engine.live(sid)
        live.closed = True
        engine.sessions.pop(sid, None)
        async with live.lock:
            await asyncio.to_thread(live.session.close)
        return {"closed": sid}

    @app.post("/v1/sessions/{sid}/anatomy")
    async def set_anatomy(sid: str, request: Request):
        auth(request)
        live = engine.live(sid)
        vid = _volume_id(await json_request(request))
        mask = engine.volume(vid)
        async with live.lock:
            if live.closed:
                raise Reject(404, "UnknownSession", "the session was closed")
            if vid not in live.anatomies:
                live.anatomies[vid] = await asyncio.to_thread(_anatomy, live.session, mask)
        return {"anatomy": vid, "key": live.anatomies[vid][1]}

    async def run_latest(live: LiveSession, fn, *args):
        """Run fn on a worker thread once this session's earlier requests are done, unless a newer
        request arrived meanwhile (then: 409 Superseded)."""
        live.arrivals += 1
        ticket = live.arrivals
        async with live.lock:
            if live.closed:
                raise Reject(404, "UnknownSession", "the session was closed")
            if ticket != live.arrivals:
                raise Superseded("a newer request for this session arrived; this one was dropped")
            engine.running += 1
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                engine.running -= 1
                engine.served += 1

    @app.post("/v1/sessions/{sid}/predict")
    async def predict(sid: str, request: Request):
        start = time.perf_counter()
        auth(request)
        live = engine.live(sid)
        prompts = prompt_set(live, await json_request(request))
        head, payload, timings = await run_latest(live, _predict, live.session, prompts)
        timings["server"] = time.perf_counter() - start
        head["timings"] = timings
        return Response(frame(head, payload), media_type="application/octet-stream")

    @app.get("/v1/sessions/{sid}/progress")
    async def progress(sid: str, request: Request):
        auth(request)
        live = engine.live(sid)  # never waits for the session's lock: a prediction holds it
        return dict(live.progress.snapshot() if live.progress else {}, running=live.lock.locked())

    @app.post("/v1/sessions/{sid}/propose")
    async def propose(sid: str, request: Request):
        auth(request)
        live = engine.live(sid)
        prompts = prompt_set(live, await json_request(request))
        ras = await run_latest(live, _propose, live.session, prompts)
        return {"ras": [float(v) for v in ras]}

    @app.post("/v1/sessions/{sid}/backend")
    async def backend(sid: str, request: Request):
        auth(request)
        live = engine.live(sid)
        from .backends import resolve_model_name

        text = _string(await json_request(request), "text", "", MAX_TEXT_CHARS)
        return {"name": resolve_model_name(live.session.model, parse_description(text))}

    return app


# ---- the command (its options: tagseg.commands.serve) --------------------------------------------------
def read_token(path: Path, warn) -> str:
    """The token in `path`; a missing file gets a new random token (readable by the owner only)."""
    if not path.exists():
        token = secrets.token_urlsafe(32)
        write_text_atomic(path, token + "\n", what="the token file", mode=0o600)  # the owner's only
        warn(f"wrote a new random token to {path}")
        return token
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the token file ({one_line(exc)})") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"{path}: the token must be at least {MIN_TOKEN_CHARS} characters on the first line")
    if not all(33 <= ord(ch) < 127 for ch in token):
        raise InputError(f"{path}: the token must be printable ASCII without spaces")
    return token


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: {exc.strerror or exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(args, reporter) -> int:
    """`tagseg serve` (its options: tagseg.commands.serve): check them, bind, print the ready line, serve."""
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: a port is 0..65535")
    if not args.max_upload_mb > 0:
        raise InputError("--max-upload-mb must be positive")
    loopback = is_loopback_host(args.host)
    token = read_token(Path(args.token_file).expanduser(), reporter.warn) if args.token_file else None
    if not loopback and token is None:
        raise InputError(
            f"refusing to listen on {args.host} without a token: anyone who can reach it could run "
            "the model and read the uploaded images; add --token-file FILE"
        )
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise InputError("tagseg serve needs FastAPI and uvicorn: pip install fastapi uvicorn") from None
    from .devices import resolve_device

    device = resolve_device(args.device, reporter.warn)
    engine = Engine(device, token, int(args.max_upload_mb * 2**20), reporter.warn)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    ready = {
        "url": f"http://{shown}:{port}",
        "pid": os.getpid(),
        "protocol": PROTOCOL,
        "device": device,
        "token": bool(token),
    }

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                print(json.dumps(ready), flush=True)

    config = uvicorn.Config(
        build_app(engine), log_level="warning", access_log=False, timeout_keep_alive=60, lifespan="off"
    )
    server = _Server(config)
    if args.exit_with_stdin:

        def watch() -> None:
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except (OSError, ValueError):
                pass
            server.should_exit = True

        threading.Thread(target=watch, name="tagseg-stdin-watch", daemon=True).start()
    server.run(sockets=[sock])
    return 0
