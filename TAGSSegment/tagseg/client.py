"""`RemoteSession`: a `Session` whose model runs in a `tagseg serve` process, here or on a GPU machine.

Only the standard library (http.client, json, zlib, hashlib, struct) and numpy are used, so 3D Slicer
can talk to a server with nothing installed: importing this module loads neither torch nor any web
framework. The wire format lives here too, so the server and clients that drive the exchange
themselves (Slicer's event loop) share one definition.

Wire format (protocol 1). Every request carries `Authorization: Bearer TOKEN` when the server has a
token. JSON bodies are UTF-8 JSON objects without NaN/Infinity. Binary bodies are one *frame*:

    b"TGS1" | uint32 big-endian N | N bytes of a JSON header | payload bytes

- Volume upload ``PUT /v1/volumes/{id}``: header ``{"dtype": "<i2", "shape": [k, j, i],
  "ijk_to_ras": [[4x4]], "name": str, "encoding": "raw" | "zlib"}``, payload = the C-order voxel
  bytes (zlib-compressed when encoding is "zlib"). ``id`` is `volume_id`: SHA-256 of the canonical
  header JSON (dtype, shape, matrix) followed by the raw bytes, so a volume is sent once per server.
- Prediction ``POST /v1/sessions/{sid}/predict`` with the prompts as JSON (`prompt_json`); the reply
  is a frame: header ``{"shape", "dtype", "bbox": [[k0, j0, i0], [k1, j1, i1]] | null (half-open),
  "name", "meta", "timings", "warnings": [{"code", "message"}]}``, payload = zlib of the mask's bytes inside
  the box. ``GET /v1/sessions/{sid}/progress`` answers the latest progress report of the session's model
  thread, ``{"stage", "done", "total", "running"}`` (the first three absent before any report).
- Errors are one-line JSON ``{"error": ClassName, "message": str}`` with a 4xx status (5xx only for
  bugs); engine errors carry the `TagsegError` subclass name and are raised here as that class.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from . import errors
from . import prompts as P
from .checks import ResultWarning
from .errors import EngineUnavailable, PromptError, TagsegError
from .geometry import mask_bbox
from .text import parse_description
from .volume import Volume, check_volume

PROTOCOL = 1
MAGIC = b"TGS1"
MAX_FRAME_HEADER = 64 * 1024
# voxel types accepted on the wire (each byte order): what check_volume accepts, object types excluded
WIRE_DTYPES = frozenset(
    d.str
    for name in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
    for d in (np.dtype(name), np.dtype(name).newbyteorder())
)
# a dead local server answers at once; this only bounds connecting to a machine that does not answer
CONNECT_TIMEOUT_S = 10.0
# how often RemoteSession asks for progress while a prediction runs (only when a progress callback is given)
PROGRESS_POLL_S = 0.25
ERROR_CLASSES = {
    cls.__name__: cls
    for cls in (
        TagsegError,
        errors.InputError,
        errors.PromptError,
        errors.ModelError,
        errors.DeviceError,
        EngineUnavailable,
        errors.Superseded,
    )
}


# ---- wire format ---------------------------------------------------------------------------------------
def frame(header: dict, payload: bytes | memoryview = b"") -> bytes:
    head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + bytes(payload)


def unframe(body: bytes | bytearray | memoryview) -> tuple[dict, memoryview]:
    """(header, payload) of a frame; ValueError when it is not one."""
    view = memoryview(body)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise ValueError("not a tagseg frame (bad magic)")
    (size,) = struct.unpack(">I", view[4:8])
    if size > MAX_FRAME_HEADER or 8 + size > len(view):
        raise ValueError("frame header size out of range")
    header = json.loads(bytes(view[8 : 8 + size]), parse_constant=_no_constant)
    if not isinstance(header, dict):
        raise ValueError("frame header is not a JSON object")
    return header, view[8 + size :]


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


def volume_header(volume: Volume) -> dict:
    array = volume.array
    return {
        "dtype": array.dtype.str,
        "shape": [int(n) for n in array.shape],
        "ijk_to_ras": [[float(v) for v in row] for row in np.asarray(volume.ijk_to_ras)],
    }


def volume_digest(header: dict):
    """A SHA-256 object fed with the canonical header (dtype, shape, matrix): update it with the raw bytes, in
    as many pieces as suits the caller (Slicer hashes a large volume a few megabytes per timer tick)."""
    canonical = json.dumps(
        {k: header[k] for k in ("dtype", "shape", "ijk_to_ras")}, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()
    return hashlib.sha256(canonical)


def volume_id(header: dict, raw: bytes | memoryview) -> str:
    """The content name of a volume: SHA-256 of the canonical header (dtype, shape, matrix) and the raw bytes."""
    digest = volume_digest(header)
    digest.update(raw)
    return digest.hexdigest()


def _raw_bytes(volume: Volume) -> memoryview:
    # an ndarray is a buffer; numpy's stubs declare it only for Python >= 3.12
    return memoryview(np.ascontiguousarray(volume.array)).cast("B")  # type: ignore[arg-type]


def encode_volume(volume: Volume, compress: bool = False) -> tuple[str, list[bytes | memoryview]]:
    """(id, body parts) of a volume upload; the parts are sent back to back (no copy of the voxels)."""
    raw = _raw_bytes(volume)
    header = volume_header(volume)
    vid = volume_id(header, raw)
    header["name"] = str(volume.name or "")[:200]
    header["encoding"] = "zlib" if compress else "raw"
    payload = zlib.compress(raw, 1) if compress else raw
    head = frame(header)
    return vid, [head, payload]


def prompt_json(points: Iterable[P.Point], boxes: Iterable[P.Box], text: str, anatomy: str | None) -> dict:
    return {
        "points": [{"ras": list(p.ras), "positive": bool(p.positive)} for p in points],
        "boxes": [{"a": list(b.corner_a), "b": list(b.corner_b)} for b in boxes],
        "text": text,
        "anatomy": anatomy,
    }


def encode_mask(array: np.ndarray, level: int = 1) -> tuple[dict, bytes]:
    """(header part, payload) of a mask reply: the array cropped to its bounding box, zlib-compressed."""
    arr = np.asarray(array)
    box = mask_bbox(arr)
    header = {
        "shape": [int(n) for n in arr.shape],
        "dtype": arr.dtype.str,
        "bbox": None if box is None else [list(box[0]), list(box[1])],
    }
    if box is None:
        return header, b""
    (k0, j0, i0), (k1, j1, i1) = box
    return header, zlib.compress(np.ascontiguousarray(arr[k0:k1, j0:j1, i0:i1]).tobytes(), level)


def decode_mask(header: dict, payload: bytes | memoryview) -> np.ndarray:
    """The full-grid array of a mask reply; ValueError for an inconsistent reply."""
    shape = tuple(int(n) for n in header["shape"])
    dtype = np.dtype(header["dtype"]) if header.get("dtype") in WIRE_DTYPES else None
    if dtype is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError("bad mask header")
    out = np.zeros(shape, dtype=dtype)
    if header.get("bbox") is None:
        return out
    lo, hi = (tuple(int(v) for v in corner) for corner in header["bbox"])
    crop = tuple(b - a for a, b in zip(lo, hi, strict=False))
    if any(a < 0 or b > n or b <= a for a, b, n in zip(lo, hi, shape, strict=False)):
        raise ValueError("mask box outside the grid")
    expected = int(np.prod(crop)) * dtype.itemsize
    raw = zlib.decompressobj().decompress(payload, expected + 1)
    if len(raw) != expected:
        raise ValueError("mask payload has the wrong size")
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = np.frombuffer(raw, dtype=dtype).reshape(crop)
    return out


def is_loopback_host(host: str) -> bool:
    import ipaddress

    host = (host or "").strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- transport -----------------------------------------------------------------------------------------
class _UnknownSession(Exception):
    pass


class _UnknownVolume(Exception):
    pass


class _UnknownAnatomy(Exception):
    pass


_INTERNAL = {"UnknownSession": _UnknownSession, "UnknownVolume": _UnknownVolume, "UnknownAnatomy": _UnknownAnatomy}
# what a broken connection looks like (server killed, restarted, network gone)
_DISCONNECTS = (
    ConnectionError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    http.client.BadStatusLine,
    BrokenPipeError,
)


class EngineClient:
    """Requests to one `tagseg serve`: keep-alive connections (one per concurrent caller), the token,
    and the mapping of replies to results or `TagsegError` subclasses."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.InputError(f"engine URL {url!r}: expected http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self.timeout = float(timeout)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self._host)

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT_S)
        conn.connect()
        conn.sock.settimeout(self.timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        reason = _describe(exc)
        return EngineUnavailable(
            f"the tagseg engine at {self.url} is not reachable ({reason}); "
            "start it with `tagseg serve` or check the URL"
        )

    def request(
        self, method: str, path: str, body=None, json_body: dict | None = None, timeout: float | None = None
    ) -> tuple[int, dict, bytes]:
        """(status, lower-case headers, body) of one exchange; EngineUnavailable when none completes."""
        headers = {"Accept": "application/json, application/octet-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if json_body is not None:
            body = json.dumps(json_body, allow_nan=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        parts = [] if body is None else ([body] if isinstance(body, (bytes, bytearray, memoryview)) else list(body))
        if body is not None:
            headers["Content-Length"] = str(sum(memoryview(p).nbytes for p in parts))
            if json_body is None:
                headers["Content-Type"] = "application/octet-stream"
        for attempt in range(2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                conn.sock.settimeout(self.timeout if timeout is None else timeout)
                conn.putrequest(method, self._base + path, skip_accept_encoding=True)
                for key, value in headers.items():
                    conn.putheader(key, value)
                conn.endheaders()
                for part in parts:
                    conn.send(part)
                reply = conn.getresponse()
                data = reply.read()
            except _DISCONNECTS as exc:
                _close(conn)
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server had closed: one fresh try
                raise self._unavailable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                _close(conn)
                raise self._unavailable(exc) from None
            if reply.will_close:
                _close(conn)
            else:
                with self._lock:
                    self._idle.append(conn)
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, data
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, **kwargs) -> tuple[dict, bytes | memoryview]:
        """A successful reply as (JSON object or frame header, payload); errors raised as their classes."""
        status, headers, data = self.request(method, path, **kwargs)
        if 200 <= status < 300:
            if headers.get("content-type", "").startswith("application/octet-stream"):
                try:
                    header, payload = unframe(data)
                except ValueError as exc:
                    raise TagsegError(f"engine at {self.url} sent a malformed reply ({exc})") from None
                return header, payload
            return _json_object(data) or {}, b""
        raise self._error(status, data)

    def _error(self, status: int, data: bytes) -> Exception:
        return reply_error(self.url, status, data)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def reply_error(url: str, status: int, data: bytes) -> Exception:
    """The exception a non-2xx reply stands for: the engine's own `TagsegError` subclass when it names one,
    `EngineUnavailable` for a refused token or something that is not a tagseg engine."""
    reply = _json_object(data) or {}
    name, message = str(reply.get("error", "")), str(reply.get("message", "")) or f"HTTP {status}"
    if name in _INTERNAL:
        return _INTERNAL[name](message)
    if name in ERROR_CLASSES:
        return ERROR_CLASSES[name](message)
    if status == 401:
        return EngineUnavailable(f"the tagseg engine at {url} refused the token ({message})")
    if status == 413:
        return errors.InputError(f"the tagseg engine at {url} refused an upload: {message}")
    if not name:
        return EngineUnavailable(f"{url} did not answer like a tagseg engine (HTTP {status})")
    return TagsegError(f"the tagseg engine at {url} answered {name}: {message}")


def _json_object(data: bytes) -> dict | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _close(conn) -> None:
    try:
        if conn is not None:
            conn.close()
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: no server is listening"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(exc, _DISCONNECTS):
        return "the connection closed before an answer: the server exited or was killed"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    return errors.one_line(exc, 200, with_type=True)


# ---- the session ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _State:
    points: tuple[P.Point, ...] = ()
    boxes: tuple[P.Box, ...] = ()
    text: str = ""
    anatomy: str | None = None  # volume id of the organ mask on the server


class RemoteSession:
    """`tagseg.Session` with the model in a `tagseg serve` process: the same methods, errors and results.

    >>> s = RemoteSession("http://127.0.0.1:8765", vol, token=tok); s.add_point((r, a, s_)); mask = s.predict()

    The volume is uploaded once (named by its content hash); prompts, undo and redo are kept here and
    each `predict` sends the current prompts. If the server restarted at the same URL, the session is
    opened again by itself; a server that cannot be reached raises `EngineUnavailable`.
    """

    def __init__(
        self,
        url: str,
        volume: Volume,
        token: str | None = None,
        model: str = "auto",
        device: str = "auto",
        *,
        timeout: float = 600.0,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if not isinstance(volume, Volume):
            raise TypeError("RemoteSession needs a tagseg.Volume (see tagseg.load_volume)")
        check_volume(volume)
        self.volume = volume
        self.model = model
        self.requested_device = device
        self.device = device
        self._warn = warn
        self._client = EngineClient(url, token, timeout)
        self.url = self._client.url
        self._history: P.UndoHistory[_State] = P.UndoHistory(_State())
        self._anatomies: dict[str, Volume] = {}
        self._sid: str | None = None
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.warnings: tuple[ResultWarning, ...] = ()
        self._open()

    # ---- connection ------------------------------------------------------------------------------------
    def _upload(self, volume: Volume) -> str:
        vid, parts = encode_volume(volume, compress=not self._client.loopback)
        self._send_volume(vid, parts)
        return vid

    def _send_volume(self, vid: str, parts: list) -> None:
        size = sum(memoryview(p).nbytes for p in parts)
        limit = self._client.call("GET", "/v1/health")[0].get("max_upload_bytes")
        if isinstance(limit, int) and size > limit:
            raise errors.InputError(
                f"the volume is {size / 2**20:.0f} MB, more than the engine at {self.url} "
                f"accepts ({limit / 2**20:.0f} MB; see tagseg serve --max-upload-mb)"
            )
        self._client.call("PUT", f"/v1/volumes/{vid}", body=parts)

    def _open(self) -> None:
        vid, parts = encode_volume(self.volume, compress=not self._client.loopback)
        request = {"volume": vid, "model": self.model, "device": self.requested_device}
        try:
            reply, _ = self._client.call("POST", "/v1/sessions", json_body=request)
        except _UnknownVolume:
            self._send_volume(vid, parts)
            reply, _ = self._client.call("POST", "/v1/sessions", json_body=request)
        self._sid = str(reply["session"])
        self.device = str(reply.get("device", self.device))
        for message in reply.get("warnings", ()):
            self._warn_once(str(message))

    def _warn_once(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)

    def _register_anatomy(self, vid: str) -> None:
        for attempt in range(2):
            try:
                self._client.call("POST", f"/v1/sessions/{self._sid}/anatomy", json_body={"volume": vid})
                return
            except _UnknownVolume:
                if attempt:
                    raise
                self._upload(self._anatomies[vid])

    def _session_call(
        self, path: str, json_body: dict, timeout: float | None = None
    ) -> tuple[dict, bytes | memoryview]:
        """A call on this session; re-opens it once if the server no longer knows it (restarted)."""
        for attempt in range(3):
            try:
                if self._sid is None:
                    self._open()
                return self._client.call(
                    "POST", f"/v1/sessions/{self._sid}/{path}", json_body=json_body, timeout=timeout
                )
            except (_UnknownSession, _UnknownVolume, _UnknownAnatomy) as exc:
                if attempt == 2:
                    raise EngineUnavailable(
                        f"the tagseg engine at {self.url} keeps forgetting this session ({exc})"
                    ) from None
                if isinstance(exc, _UnknownAnatomy):
                    assert self._state.anatomy is not None  # only a request naming an anatomy is told this
                    self._register_anatomy(self._state.anatomy)
                else:
                    self._sid = None
        raise AssertionError("unreachable")

    # ---- prompts (kept here; the same checks and messages as Session) ------------------------------------
    @property
    def _state(self) -> _State:
        return self._history.current

    def _push(self, new: _State) -> None:
        self._history.push(new)

    def set_text(self, text: str | None) -> None:
        desc = parse_description(text)
        s = self._state
        self._push(_State(s.points, s.boxes, desc.text, s.anatomy))

    def set_anatomy(self, organ_mask: Volume | None) -> None:
        s = self._state
        if organ_mask is None:
            self._push(_State(s.points, s.boxes, s.text, None))
            return
        if not isinstance(organ_mask, Volume):
            raise PromptError("anatomy mask must be a tagseg.Volume")
        vid = self._upload(organ_mask)
        self._anatomies[vid] = organ_mask
        for attempt in range(2):
            try:
                if self._sid is None:
                    self._open()
                self._register_anatomy(vid)  # the server resamples and checks it (PromptError if empty)
                break
            except _UnknownSession:
                if attempt:
                    raise EngineUnavailable(f"the tagseg engine at {self.url} keeps forgetting this session") from None
                self._sid = None
        self._push(_State(s.points, s.boxes, s.text, vid))

    def add_point(self, ras, positive: bool = True) -> None:
        point = P.make_point(self.volume, ras, positive)
        s = self._state
        self._push(_State(s.points + (point,), s.boxes, s.text, s.anatomy))

    def add_box(self, corner_a, corner_b) -> None:
        box = P.make_box(self.volume, corner_a, corner_b)
        s = self._state
        self._push(_State(s.points, s.boxes + (box,), s.text, s.anatomy))

    def undo(self) -> bool:
        """Take back the last interaction; False when there is nothing to undo."""
        return self._history.undo()

    def redo(self) -> bool:
        return self._history.redo()

    def reset(self) -> None:
        """Forget every prompt (the server keeps its image encodings)."""
        self._history.reset(_State())

    def _prompt_request(self) -> dict:
        s = self._state
        return prompt_json(s.points, s.boxes, s.text, s.anatomy)

    # ---- model calls -----------------------------------------------------------------------------------
    def _watch_progress(self, callback, stop: threading.Event) -> None:
        """Poll the server's progress for this session until `stop`, then once more; report each change."""
        last = None
        while True:
            stopped = stop.wait(PROGRESS_POLL_S)
            try:
                reply, _ = self._client.call("GET", f"/v1/sessions/{self._sid}/progress", timeout=30.0)
            except (TagsegError, _UnknownSession, _UnknownVolume, _UnknownAnatomy):
                reply = {}
            state = (reply.get("stage"), reply.get("done"), reply.get("total"))
            if state != last and isinstance(state[0], str) and all(isinstance(v, int) for v in state[1:]):
                last = state
                callback(*state)
            if stopped:
                return

    def predict(self, progress: Callable[[str, int, int], None] | None = None) -> Volume:
        """The mask for the current prompts: a uint8 Volume on the input grid (1 = target), with the server's
        result warnings in `result.meta["warnings"]` and `self.warnings`, as `Session.predict`. With a
        `progress` callback (default: the session's), the server's progress is polled while it runs.

        Raises `Superseded` when a newer predict for this session (another thread) replaced this one."""
        start = time.perf_counter()
        callback = progress if progress is not None else self.progress
        stop = threading.Event()
        watcher = None
        if callback is not None and self._sid is not None:
            watcher = threading.Thread(
                target=self._watch_progress, args=(callback, stop), daemon=True, name="tagseg-progress"
            )
            watcher.start()
        try:
            header, payload = self._session_call("predict", self._prompt_request())
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        try:
            array = decode_mask(header, payload)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise TagsegError(f"engine at {self.url} sent a malformed mask ({exc})") from None
        if array.shape != self.volume.shape_kji:
            raise TagsegError(
                f"engine at {self.url} sent a mask of shape {array.shape}, expected {self.volume.shape_kji}"
            )
        timings = {
            str(k): float(v) for k, v in dict(header.get("timings") or {}).items() if isinstance(v, (int, float))
        }
        total = time.perf_counter() - start
        timings["engine_total"] = timings.get("total", 0.0)
        timings["remote_overhead"] = max(total - timings.get("server", timings["engine_total"]), 0.0)
        timings["total"] = total
        self.timings = timings
        meta = dict(header.get("meta") or {})
        warnings = tuple(ResultWarning.from_dict(w) for w in header.get("warnings") or () if isinstance(w, dict))
        result = self.volume.with_array(array, name=str(header.get("name", "")))
        result.meta.update(
            {
                "model": meta.get("model"),
                "anatomy": meta.get("anatomy"),
                "timings": dict(timings),
                "warnings": list(warnings),
            }
        )
        self.warnings = warnings
        return result

    def propose_point(self) -> tuple[float, float, float]:
        """Text-only start (TAGS checkpoints): a first include point where the text map peaks."""
        reply, _ = self._session_call("propose", self._prompt_request())
        r, a, s = (float(v) for v in reply["ras"])
        return r, a, s

    def backend_name(self) -> str:
        reply, _ = self._session_call("backend", self._prompt_request(), timeout=60.0)
        return str(reply["name"])

    def close(self) -> None:
        """Free the server-side session (its models stay loaded for other sessions). Never raises."""
        sid, self._sid = self._sid, None
        if sid is not None:
            try:
                self._client.request("DELETE", f"/v1/sessions/{sid}", timeout=30.0)
            except TagsegError:
                pass
        self._client.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def engine_health(url: str, token: str | None = None, timeout: float = 5.0) -> dict:
    """The server's /v1/health reply (protocol, version, device, sessions, ...); EngineUnavailable if none."""
    client = EngineClient(url, token, timeout)
    try:
        reply, _ = client.call("GET", "/v1/health")
        return reply
    finally:
        client.close()
