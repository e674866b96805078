"""Third-party weights TAGS can use, where they live, and the one explicit, verified way to download them.

Nothing here touches the network unless `download` is called, and `download` refuses when the environment says
offline (HF_HUB_OFFLINE / TAGSEG_OFFLINE). A download is written to `<file>.part`, hashed while streaming and only
renamed into place once size and SHA-256 match, so a weights folder never holds a partial or unverified file under
its real name.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, one_line
from .fs import AtomicFile, WriteError
from .paths import cache_dir, sha256_file

CHUNK_BYTES = 1 << 20
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightEntry:
    """One downloadable file: what it is, where it comes from, how to check it and why TAGS wants it."""

    name: str
    file: str
    url: str
    size: int | None  # bytes; None where the publisher gives no size
    sha256: str
    licence: str
    source: str
    purpose: str


CATALOGUE: dict[str, WeightEntry] = {
    # Size and SHA-256 as published by Meta (segment-anything README / model card); a mismatch must fail the download.
    "sam-vit-b": WeightEntry(
        name="sam-vit-b",
        file="sam_vit_b_01ec64.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        size=375042383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        licence="Apache-2.0",
        source="Meta, segment-anything",
        purpose="TAGS image encoder initialisation (training)",
    ),
    # OpenAI names the folder of each CLIP file after the file's SHA-256; OpenAI publishes no size.
    "clip-vit-l-14": WeightEntry(
        name="clip-vit-l-14",
        file="ViT-L-14.pt",
        url="https://openaipublic.azureedge.net/clip/models/"
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        size=None,
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        licence="MIT",
        source="OpenAI CLIP",
        purpose="TAGS text embeddings (training; inference with a new description)",
    ),
}


def offline_mode() -> bool:
    """True when the environment forbids network access (either variable set to 1/true/yes/on)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TAGSEG_OFFLINE"))


def weights_dir() -> Path:
    """Folder for downloaded or hand-placed weights: $TAGSEG_WEIGHTS_DIR, else <cache>/weights."""
    override = os.environ.get("TAGSEG_WEIGHTS_DIR")
    return Path(override).expanduser() if override else cache_dir() / "weights"


def entry(name: str) -> WeightEntry:
    """The catalogue entry, or a one-line ModelError listing the known names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ModelError(f"unknown weights {name!r}; known: {', '.join(sorted(CATALOGUE))}") from None


def target_path(name: str) -> Path:
    """Where the file for `name` belongs (whether or not it is there)."""
    return weights_dir() / entry(name).file


def find_weight(name: str) -> Path | None:
    """The file for `name` if it is present in the weights folder (not hashed; see `verify`)."""
    path = target_path(name)
    return path if path.is_file() else None


def _size_text(size: int | None) -> str:
    return f"{size:,} bytes" if size is not None else "size unknown"


def describe(name: str) -> dict:
    """Everything a user or the CLI needs to know about one entry, JSON-ready."""
    item = entry(name)
    path = find_weight(name)
    return {
        "name": item.name,
        "file": item.file,
        "url": item.url,
        "size": item.size,
        "sha256": item.sha256,
        "licence": item.licence,
        "source": item.source,
        "purpose": item.purpose,
        "path": str(path) if path else None,
        "present": path is not None,
        "file_size": path.stat().st_size if path else None,
        "destination": str(target_path(name)),
    }


def offline_instructions(name: str) -> str:
    """One paragraph telling a user on an offline machine exactly what to fetch and where to put it."""
    item = entry(name)
    return (
        f"Download {item.url} ({_size_text(item.size)}, SHA-256 {item.sha256}; {item.licence} licence, "
        f"{item.source}) on a machine with internet access and place it at {target_path(name)} "
        f"(set TAGSEG_WEIGHTS_DIR to use another folder), then run `tagseg weights verify {name}`."
    )


def verify(name: str) -> bool:
    """True when the file is present and its size (where known) and SHA-256 match the catalogue."""
    item = entry(name)
    path = find_weight(name)
    if path is None:
        return False
    if item.size is not None and path.stat().st_size != item.size:
        return False
    return sha256_file(path) == item.sha256


def download(name: str, *, timeout_s: float = 20, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch, verify and install one catalogue file; returns its path.

    A file already present and verified is returned without a download. `timeout_s` bounds every socket
    operation (connect and each read), so a stalled server fails in about that time. `progress(done, total)` is
    called after every chunk; total is None when neither the catalogue nor the server gives a size.
    """
    item = entry(name)
    target = target_path(name)
    if offline_mode():
        raise ModelError(
            f"offline (HF_HUB_OFFLINE/TAGSEG_OFFLINE is set): not downloading {name}. " + offline_instructions(name)
        )
    if not item.url.startswith(("https://", "http://")):
        raise ModelError(f"weights {name}: only http(s) URLs can be downloaded, not {item.url}")
    if target.is_file() and verify(name):
        return target
    digest = hashlib.sha256()
    done = 0
    try:
        # through the one atomic writer: the file appears under its name only whole and verified
        with AtomicFile(target, suffix=target.suffix, what=f"the weights {name}") as part:
            request = urllib.request.Request(item.url, headers={"User-Agent": "tagseg"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response, part.path.open("wb") as out:
                announced = response.headers.get("Content-Length")
                total = (
                    item.size
                    if item.size is not None
                    else (int(announced) if announced and announced.isdigit() else None)
                )
                if item.size is not None and announced and announced.isdigit() and int(announced) != item.size:
                    raise ModelError(f"{item.url} announces {int(announced):,} bytes, expected {item.size:,}")
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if item.size is not None and done > item.size:
                        raise ModelError(f"{item.url} sent more than the expected {item.size:,} bytes")
                    if progress is not None:
                        progress(done, total)
            if item.size is not None and done != item.size:
                raise ModelError(f"downloaded {done:,} bytes of {item.file}, expected {item.size:,}")
            got = digest.hexdigest()
            if got != item.sha256:
                raise ModelError(
                    f"SHA-256 mismatch for {item.file}: got {got}, expected {item.sha256} "
                    f"({item.source}); nothing was saved"
                )

            def read_back(tmp: Path) -> None:  # what reached the disk, not what passed through memory
                if tmp.stat().st_size != done or sha256_file(tmp) != got:
                    raise OSError(errno.EIO, "the file read back differs from what was downloaded")

            part.commit(read_back)
    except (ModelError, WriteError):
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        text = one_line(reason) if str(reason).strip() else type(exc).__name__
        if isinstance(exc, urllib.error.HTTPError):
            text = f"HTTP {exc.code} {text}"
        raise ModelError(
            f"download of {name} from {item.url} failed after {done:,} bytes "
            f"({type(exc).__name__}: {text}); nothing was saved"
        ) from None
    return target


def _list_lines() -> list[str]:
    lines = []
    for name in CATALOGUE:
        info = describe(name)
        size = info["size"] if info["size"] is not None else info["file_size"]
        state = f"present at {info['path']}" if info["present"] else f"missing (goes to {info['destination']})"
        lines.append(
            f"{name:15s} {info['file']:22s} {_size_text(size) if size is not None else 'unknown':>20s}  "
            f"{info['licence']:10s} {info['purpose']}; {state}"
        )
    return lines


def weights_command(action: str, name: str | None, as_json: bool, print_fn: Callable[[str], object] = print) -> int:
    """Back end of `tagseg weights [list|download NAME|verify NAME] [--json]`; returns the exit code.

    list and a successful download/verify return 0; a verify of a missing or mismatching file returns 1.
    Unknown actions or names and downloads refused offline raise ModelError.
    """
    if action == "list":
        if as_json:
            print_fn(json.dumps([describe(n) for n in CATALOGUE], indent=2))
        else:
            for line in _list_lines():
                print_fn(line)
        return 0
    if action not in ("download", "verify"):
        raise ModelError(f"unknown weights action {action!r}; use list, download NAME or verify NAME")
    if not name:
        raise ModelError(f"`tagseg weights {action}` needs a name; known: {', '.join(sorted(CATALOGUE))}")
    entry(name)
    if action == "download":
        path = download(name)
        if as_json:
            print_fn(json.dumps(describe(name), indent=2))
        else:
            print_fn(f"{name}: {path} (size and SHA-256 verified)")
        return 0
    present = find_weight(name) is not None
    ok = present and verify(name)
    if as_json:
        print_fn(json.dumps({**describe(name), "verified": ok}, indent=2))
    elif ok:
        print_fn(f"{name}: {target_path(name)} OK (SHA-256 {entry(name).sha256})")
    elif present:
        print_fn(
            f"{name}: {target_path(name)} does NOT match the catalogue (size or SHA-256); " + offline_instructions(name)
        )
    else:
        print_fn(f"{name}: not present. " + offline_instructions(name))
    return 0 if ok else 1
