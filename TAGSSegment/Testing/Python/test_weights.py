"""The weights catalogue and its explicit download: offline refusal, verification, timeouts and no partial files.

Downloads go to a local http.server on 127.0.0.1 (the catalogue entry is pointed at it), never to the internet.
"""

import dataclasses
import hashlib
import http.server
import json
import socket
import threading
import time

import pytest

from tagseg import weights
from tagseg.errors import ModelError

PAYLOAD = bytes(range(256)) * 4099 + b"tail"  # a little over 1 MiB: more than one download chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_SIZE = len(PAYLOAD)


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TAGSEG_OFFLINE", raising=False)


class Handler(http.server.BaseHTTPRequestHandler):
    """/file: the payload; /stall-start: no response at all; /stall-middle: half the body, then silence."""

    release = threading.Event()

    def do_GET(self):
        if self.path == "/stall-start":
            self.release.wait(10)
            return
        if self.path not in ("/file", "/stall-middle"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if self.path == "/file":
            self.wfile.write(PAYLOAD)
            return
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        self.release.wait(10)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    Handler.release.clear()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def point_at(monkeypatch, url, size=PAYLOAD_SIZE, sha256=PAYLOAD_SHA, name="sam-vit-b"):
    item = dataclasses.replace(weights.CATALOGUE[name], url=url, size=size, sha256=sha256)
    monkeypatch.setitem(weights.CATALOGUE, name, item)
    return item


def leftovers(private_folders):
    folder = private_folders / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- catalogue --------------------------------------------------------------------------------------------------------


def test_catalogue_entries_are_complete():
    assert set(weights.CATALOGUE) >= {"sam-vit-b", "clip-vit-l-14"}
    for name, item in weights.CATALOGUE.items():
        assert item.name == name
        assert item.url.startswith("https://") and item.url.rsplit("/", 1)[1] == item.file
        assert len(item.sha256) == 64 and int(item.sha256, 16) >= 0
        assert item.licence and item.source and item.purpose
    sam = weights.CATALOGUE["sam-vit-b"]
    assert (sam.file, sam.size, sam.licence) == ("sam_vit_b_01ec64.pth", 375042383, "Apache-2.0")
    assert sam.sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    clip = weights.CATALOGUE["clip-vit-l-14"]
    assert (clip.file, clip.size, clip.licence) == ("ViT-L-14.pt", None, "MIT")
    assert f"/{clip.sha256}/" in clip.url  # OpenAI names the folder after the file's SHA-256


def test_weights_dir_and_describe(private_folders, monkeypatch):
    assert weights.weights_dir() == private_folders / "weights"
    monkeypatch.delenv("TAGSEG_WEIGHTS_DIR")
    assert weights.weights_dir() == private_folders / "cache" / "weights"
    monkeypatch.setenv("TAGSEG_WEIGHTS_DIR", str(private_folders / "weights"))
    info = weights.describe("clip-vit-l-14")
    assert {"file", "url", "size", "sha256", "licence", "purpose", "path", "present"} <= set(info)
    assert info["present"] is False and info["path"] is None and weights.find_weight("clip-vit-l-14") is None
    (private_folders / "weights").mkdir()
    (private_folders / "weights" / "ViT-L-14.pt").write_bytes(b"abc")
    info = weights.describe("clip-vit-l-14")
    assert info["present"] is True and info["path"] == str(private_folders / "weights" / "ViT-L-14.pt")
    assert info["file_size"] == 3 and weights.verify("clip-vit-l-14") is False
    with pytest.raises(ModelError, match="unknown weights"):
        weights.describe("sam-vit-z")


def test_offline_instructions_name_everything():
    text = weights.offline_instructions("sam-vit-b")
    item = weights.CATALOGUE["sam-vit-b"]
    for part in (item.url, item.sha256, "375,042,383 bytes", "Apache-2.0", str(weights.weights_dir() / item.file)):
        assert part in text
    assert "\n" not in text
    assert "size unknown" in weights.offline_instructions("clip-vit-l-14")


# --- download ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TAGSEG_OFFLINE"])
def test_download_refused_offline(monkeypatch, private_folders, server, var):
    point_at(monkeypatch, server + "/file")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(ModelError) as info:
        weights.download("sam-vit-b")
    message = str(info.value)
    assert "offline" in message and server + "/file" in message
    assert str(weights.weights_dir() / "sam_vit_b_01ec64.pth") in message and "\n" not in message
    assert leftovers(private_folders) == []


def test_download_from_local_server_verifies_and_installs(monkeypatch, private_folders, server, online):
    point_at(monkeypatch, server + "/file")
    seen = []
    path = weights.download("sam-vit-b", progress=lambda done, total: seen.append((done, total)))
    assert path == private_folders / "weights" / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == PAYLOAD and weights.verify("sam-vit-b")
    assert leftovers(private_folders) == ["sam_vit_b_01ec64.pth"]
    assert len(seen) >= 2 and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # already there and verified: no second download (the URL now points at a closed port)
    point_at(monkeypatch, "http://127.0.0.1:9/file")
    assert weights.download("sam-vit-b", timeout_s=2) == path
    # a file changed on disk no longer verifies
    path.write_bytes(PAYLOAD[:-1] + b"X")
    assert not weights.verify("sam-vit-b")


def test_download_with_unknown_size_checks_the_hash(monkeypatch, private_folders, server, online):
    point_at(monkeypatch, server + "/file", size=None, name="clip-vit-l-14")
    path = weights.download("clip-vit-l-14")
    assert path.name == "ViT-L-14.pt" and path.read_bytes() == PAYLOAD and weights.verify("clip-vit-l-14")


@pytest.mark.parametrize("bad", ["sha256", "size", "missing"])
def test_bad_download_fails_loudly_and_leaves_nothing(monkeypatch, private_folders, server, online, bad):
    if bad == "sha256":
        point_at(monkeypatch, server + "/file", sha256="0" * 64)
        match = "SHA-256 mismatch"
    elif bad == "size":
        point_at(monkeypatch, server + "/file", size=len(PAYLOAD) + 1)
        match = "bytes"
    else:
        point_at(monkeypatch, server + "/no-such-file")
        match = "HTTP 404"
    with pytest.raises(ModelError, match=match) as info:
        weights.download("sam-vit-b")
    assert "\n" not in str(info.value)
    assert leftovers(private_folders) == []


@pytest.mark.parametrize("where", ["stall-start", "stall-middle"])
def test_stalled_server_times_out_quickly_without_partial_file(monkeypatch, private_folders, server, online, where):
    point_at(monkeypatch, f"{server}/{where}")
    start = time.perf_counter()
    with pytest.raises(ModelError, match="failed") as info:
        weights.download("sam-vit-b", timeout_s=0.3)
    assert time.perf_counter() - start < 3.0
    assert "nothing was saved" in str(info.value)
    assert leftovers(private_folders) == []


def test_unreachable_server_is_a_model_error(monkeypatch, private_folders, online):
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_at(monkeypatch, f"http://127.0.0.1:{port}/file")
    with pytest.raises(ModelError, match="failed"):
        weights.download("sam-vit-b", timeout_s=2)
    assert leftovers(private_folders) == []


# --- CLI back end -----------------------------------------------------------------------------------------------------


def run_command(*args):
    lines = []
    code = weights.weights_command(*args, print_fn=lines.append)
    return code, "\n".join(lines)


def test_weights_command_list_text_and_json():
    code, text = run_command("list", None, False)
    assert code == 0
    assert "sam-vit-b" in text and "clip-vit-l-14" in text and "unknown" in text and "375,042,383" in text
    code, text = run_command("list", None, True)
    assert code == 0
    entries = json.loads(text)
    assert [e["name"] for e in entries] == list(weights.CATALOGUE)
    assert all(e["present"] is False and e["path"] is None for e in entries)
    assert entries[1]["size"] is None and entries[0]["size"] == 375042383


def test_weights_command_verify_and_download(monkeypatch, private_folders, server, online):
    code, text = run_command("verify", "sam-vit-b", False)
    assert code == 1 and "not present" in text
    point_at(monkeypatch, server + "/file")
    code, text = run_command("download", "sam-vit-b", True)
    assert code == 0 and json.loads(text)["present"] is True
    code, text = run_command("verify", "sam-vit-b", True)
    assert code == 0 and json.loads(text)["verified"] is True
    code, text = run_command("list", None, True)
    assert json.loads(text)[0]["path"] == str(private_folders / "weights" / "sam_vit_b_01ec64.pth")


def test_weights_command_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unknown weights"):
        run_command("download", "nope", False)
    with pytest.raises(ModelError, match="needs a name"):
        run_command("verify", None, False)
    with pytest.raises(ModelError, match="unknown weights action"):
        run_command("remove", "sam-vit-b", False)
    with pytest.raises(ModelError, match="offline"):
        run_command("download", "clip-vit-l-14", False)
