"""The outside probe's families (issue 15), as generated inputs: memory bombs refused before allocation (run in
a subprocess under an address-space limit, so a failure cannot take the machine down; peak RSS reported),
writes that cannot lie (a real full disk: a private tmpfs mounted in a mount namespace, else a monkeypatched
short write), inputs that are never outputs, exact volume bounds, DICOM/NIfTI geometry checked, and clean
one-line messages. Everything is made on the fly; nothing large is stored.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tagseg import budget, geometry
from tagseg.errors import InputError
from tagseg.fs import AtomicFile, remove_stale_parts
from tagseg.io import load_volume, save_volume
from tagseg.prompts import make_point
from tagseg.volume import Volume, make_ijk_to_ras

MODULE_DIR = Path(__file__).resolve().parents[2]
AS_LIMIT = 4 << 30  # address space of a bomb's process: torch needs ~3 GB of mappings to import
RSS_LIMIT_MB = 1024  # what a refused input may cost at most
RSS_TABLE = os.environ.get("TAGSEG_RSS_TABLE")  # append "case | MB" lines here (for the README's table)

DRIVER = textwrap.dedent("""
    import json, os, resource, sys
    limit = int(os.environ["HARDEN_AS_LIMIT"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if os.environ.get("HARDEN_FAKE_PREDICT"):
        import numpy as np
        from tagseg.session import Session
        def fake(session):
            data = np.zeros(session.volume.shape_kji, np.uint8)
            data[2:6, 4:12, 4:12] = 1
            return session.volume.with_array(data, name="tumor")
        Session.predict = fake
    if os.environ.get("HARDEN_SLOW_WRITE"):
        import time
        from tagseg import io
        real = io.write_verified
        def slow(image, tmp, *a, **k):
            real(image, tmp, *a, **k)
            print("WRITING", flush=True)
            time.sleep(60)
        io.write_verified = slow
    from tagseg import commands
    try:
        code = commands.main(sys.argv[1:])
    finally:
        # VmHWM belongs to this process image; ru_maxrss would carry over the parent's peak across exec.
        with open("/proc/self/status", encoding="ascii") as status:
            hwm = [line for line in status if line.startswith("VmHWM:")]
        rss = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(os.environ["HARDEN_REPORT"], "w", encoding="utf-8") as handle:
            json.dump({"rss_mb": rss}, handle)
    sys.exit(code)
""")


def run_limited(
    tmp_path: Path, *args, env: dict | None = None, wrap: list[str] | None = None, timeout: float = 240
) -> tuple[subprocess.CompletedProcess, float]:
    """`tagseg ARGS` in a fresh process under RLIMIT_AS; returns the result and the peak RSS in MB."""
    driver = tmp_path / "harden_driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    report = tmp_path / "harden_report.json"
    full_env = dict(
        os.environ,
        PYTHONPATH=str(MODULE_DIR),
        HF_HUB_OFFLINE="1",
        HARDEN_AS_LIMIT=str(AS_LIMIT),
        HARDEN_REPORT=str(report),
        TAGSEG_CACHE_DIR=str(tmp_path / "cache"),
        **(env or {}),
    )
    full_env.pop("TAGSEG_DEBUG", None)
    full_env.pop("TAGSEG_MEMORY_LIMIT", None)
    command = [*(wrap or []), sys.executable, str(driver), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout)
    rss = json.loads(report.read_text(encoding="utf-8"))["rss_mb"] if report.exists() else float("nan")
    return result, rss


def record_rss(case: str, rss_mb: float) -> None:
    if RSS_TABLE:
        with open(RSS_TABLE, "a", encoding="utf-8") as handle:
            handle.write(f"{case} | {rss_mb:.0f}\n")


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one error line on stderr (the program's own; its one-line warnings aside), no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("tagseg: warning: ")]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("tagseg: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def small_volume(shape=(8, 16, 16), spacing=(1.0, 1.0, 2.0), dtype=np.int16) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(
        rng.integers(-100, 100, shape).astype(dtype), make_ijk_to_ras(spacing, (10.0, -20.0, 30.0)), name="image"
    )


# ---- (1) memory bombs ------------------------------------------------------------------------------------------
def _nifti1_header(dims, datatype=2, bitpix=8, vox_offset=352.0) -> bytes:
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    full = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", header, 40, *full)
    struct.pack_into("<h", header, 70, datatype)
    struct.pack_into("<h", header, 72, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, vox_offset)
    struct.pack_into("<2h", header, 252, 0, 0)
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\x00" * 4


def bomb_nrrd(folder: Path) -> Path:
    path = folder / "bomb.nrrd"
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4000 4000 400\nencoding: gzip\n\n"
    path.write_bytes(header + gzip.compress(b"\x00" * 16))
    return path


def bomb_mha(folder: Path) -> Path:
    path = folder / "bomb.mha"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4000 4000 400\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n",
        encoding="utf-8",
    )
    return path


def bomb_nifti_isize_wrap(folder: Path) -> Path:
    """Header only, declaring 16384 x 16384 x 16 bytes: 352 + 2**32, so the gzip size field (mod 2**32) matches."""
    path = folder / "wrap.nii.gz"
    path.write_bytes(gzip.compress(_nifti1_header((16384, 16384, 16))))
    return path


def bomb_gzip_members(folder: Path) -> Path:
    """A .nii.gz whose voxels inflate to 2 GB: the same 1 MB-of-zeros gzip member repeated (2 MB on disk)."""
    path = folder / "bomb.nii.gz"
    member = gzip.compress(b"\x00" * (1 << 20), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(_nifti1_header((1024, 1024, 2048))))
        for _ in range(2048):
            handle.write(member)
    return path


def huge_config_checkpoint(folder: Path) -> Path:
    """A config within the validation limits (embed 4096, depth 96, mlp_ratio 16) with one-element tensors."""
    import torch

    from tagseg.tags.checkpoint import save_checkpoint, task_metadata
    from tagseg.tags.config import get_preset
    from tagseg.tags.tasks import TASKS

    config = get_preset("tags-b").to_dict()
    config.update(embed_dim=4096, depth=96, mlp_ratio=16, num_heads=64, text_dim=4096)
    meta = task_metadata(TASKS["kits"], config["name"], config)
    path = folder / "huge.safetensors"
    save_checkpoint(path, {"image_encoder.pos_embed": torch.ones(1)}, meta)
    return path


BOMBS = {
    "nrrd-4000x4000x400-gzip": (bomb_nrrd, "memory"),
    "mha-header-only-4000x4000x400": (bomb_mha, "memory"),
    "nifti-gz-isize-wraps": (bomb_nifti_isize_wrap, "memory"),
    "nifti-gz-2GB-gzip-bomb": (bomb_gzip_members, "memory"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_volume_bombs_are_refused_before_allocation(tmp_path, name):
    make, fragment = BOMBS[name]
    bomb = make(tmp_path)
    result, rss = run_limited(tmp_path, "segment", bomb, "-o", tmp_path / "out.nii.gz", "--point", "0,0,0")
    record_rss(f"`segment` {name} ({bomb.stat().st_size} bytes)", rss)
    assert_refused(result, str(bomb), fragment, "TAGSEG_MEMORY_LIMIT")
    assert rss < RSS_LIMIT_MB
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("command", ["segment", "install"])
def test_checkpoint_config_is_sized_before_the_network_is_built(tmp_path, command):
    checkpoint = huge_config_checkpoint(tmp_path)
    image = tmp_path / "image.nii.gz"
    save_volume(small_volume(), image)
    args = (
        [
            "segment",
            image,
            "-o",
            tmp_path / "out.nii.gz",
            "--point",
            "15,-12,36",
            "--model",
            checkpoint,
            "--device",
            "cpu",
        ]
        if command == "segment"
        else ["models", "install", checkpoint]
    )
    result, rss = run_limited(tmp_path, *args)
    record_rss(
        f"`{' '.join(map(str, args[:2])) if command == 'install' else 'segment --model'}` "
        "checkpoint with a 60 G-parameter config",
        rss,
    )
    line = assert_refused(result, "huge.safetensors")
    assert "memory" in line or "shape" in line
    assert rss < RSS_LIMIT_MB


def test_synth_shape_is_bounded_and_leaves_no_folders(tmp_path):
    out = tmp_path / "a" / "b" / "synth"
    result, rss = run_limited(tmp_path, "synth", "--out", out, "--shape", "4000,4000,4000")
    record_rss("`synth --shape 4000,4000,4000`", rss)
    assert_refused(result, "--shape", "memory")
    assert rss < RSS_LIMIT_MB
    assert not (tmp_path / "a").exists()


def test_memory_limit_comes_from_the_environment_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv(budget.ENV, "1M")
    assert budget.limit_bytes() == 1 << 20
    with pytest.raises(InputError, match="TAGSEG_MEMORY_LIMIT"):
        budget.check_voxels((128, 128, 128), 1, "x")
    budget.check_voxels((64, 64, 64), 1, "x")
    monkeypatch.delenv(budget.ENV)
    assert 64 << 20 <= budget.limit_bytes()
    image = tmp_path / "image.nii.gz"
    save_volume(small_volume(), image)
    result, _ = run_limited(
        tmp_path, "--memory-limit", "1K", "segment", image, "-o", tmp_path / "o.nii.gz", "--point", "15,-12,36"
    )
    assert_refused(result, "more than the limit of 1.0 KB")


def test_decompression_is_capped_and_morphology_radii_are_bounded():
    import io as _io

    with pytest.raises(InputError, match="decompresses to more than"):
        budget.read_capped(gzip.GzipFile(fileobj=_io.BytesIO(gzip.compress(b"\x00" * (4 << 20)))), 1 << 20, "x")
    assert budget.radius_voxels(5.0, [0.001, 1.0, 2.0]) == (budget.MAX_MORPH_RADIUS_VOXELS, 5, 2)
    assert budget.radius_voxels(0.1, [1.0]) == (1,)


# ---- (2) writes that cannot lie -------------------------------------------------------------------------------------
def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            "mkdir -p /tmp/.tagseg-tmpfs-probe && mount -t tmpfs -o size=64k tmpfs /tmp/.tagseg-tmpfs-probe",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.parametrize("output", ["m.nii", "m.nii.gz", "m.seg.nrrd", "m.nrrd", "m.mha"])
@pytest.mark.parametrize("room_kb", [0, 6])
def test_full_disk_exits_2_with_the_os_reason_and_keeps_the_previous_file(tmp_path, output, room_kb):
    """A real full disk: a 512 KB tmpfs in a private mount namespace (as root), filled but for `room_kb`."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here; test_short_write_is_never_success covers the same path in-process")
    image = tmp_path / "image.nii.gz"
    volume = small_volume(shape=(24, 96, 96))
    save_volume(volume, image)
    mount = tmp_path / "disk"
    mount.mkdir()
    target = mount / output
    (tmp_path / "prev.py").write_text(
        f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r})\nimport numpy as np\n"
        "from tagseg.io import save_volume\nfrom tagseg.volume import Volume\n"
        "save_volume(Volume(np.ones((2, 2, 2), np.uint8), np.eye(4)), sys.argv[1])\n",
        encoding="utf-8",
    )
    script = (
        f"mount -t tmpfs -o size=512k tmpfs {mount} && {sys.executable} {tmp_path / 'prev.py'} {target} && "
        f"cp {target} {tmp_path}/previous && avail=$(df -k --output=avail {mount} | tail -1) && "
        f"dd if=/dev/zero of={mount}/filler bs=1k count=$((avail - {room_kb})) 2>/dev/null; "
        f'"$@"; rc=$?; cmp -s {target} {tmp_path}/previous && echo INTACT; cp {target} {tmp_path}/after{output}; '
        f"ls -A {mount}; exit $rc"
    )
    wrap = ["unshare", "-m", "sh", "-c", script, "sh"]
    result, _ = run_limited(
        tmp_path, "segment", image, "-o", target, "--point", "15,-12,60", env={"HARDEN_FAKE_PREDICT": "1"}, wrap=wrap
    )
    if result.returncode == 0:  # with a little room a compressed mask can fit: then it must be whole
        assert room_kb > 0 and "INTACT" not in result.stdout
        written = load_volume(tmp_path / f"after{output}")
        assert written.shape_kji == volume.shape_kji and int(np.count_nonzero(written.array)) == 4 * 8 * 8
    else:
        assert_refused(result, str(target), "No space left on device", "previous file is unchanged")
        assert "INTACT" in result.stdout and " ml " not in result.stdout
    assert sorted(result.stdout.split()[-2:]) == sorted(["filler", output]), result.stdout  # no partial file


def test_full_disk_leaves_the_previous_file_and_no_partial_file(tmp_path):
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here")
    mount = tmp_path / "disk"
    mount.mkdir()
    check = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import numpy as np
        from tagseg.errors import InputError
        from tagseg.io import save_volume
        from tagseg.volume import Volume
        results = []
        for name in ("a.nii", "a.nii.gz", "a.nrrd", "a.seg.nrrd", "a.mha"):
            target = os.path.join({str(mount)!r}, name)
            save_volume(Volume(np.ones((4, 4, 4), np.uint8), np.eye(4)), target)
            before = open(target, "rb").read()
            try:
                with open(os.path.join({str(mount)!r}, "filler"), "ab") as f:
                    while True:
                        f.write(b"x" * 4096); f.flush()
            except OSError:
                pass
            big = Volume(np.random.default_rng(0).integers(0, 2, (40, 64, 64)).astype(np.uint8), np.eye(4))
            try:
                save_volume(big, target)
                results.append((name, "no error"))
            except InputError as exc:
                results.append((name, "ENOSPC" in str(exc) and open(target, "rb").read() == before
                                and sorted(os.listdir({str(mount)!r})) == sorted([name, "filler"] +
                                [n for n, _ in results])))
            os.unlink(os.path.join({str(mount)!r}, "filler"))
        print(results)
        assert all(ok is True for _, ok in results), results
    """)
    (tmp_path / "check.py").write_text(check, encoding="utf-8")
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=256k tmpfs {mount} && {sys.executable} {tmp_path / 'check.py'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_short_write_is_never_success(tmp_path, monkeypatch):
    """In-process simulation (monkeypatched writer): nifticlib's NWAD case, a short file and a normal return."""
    from tagseg import io

    target = tmp_path / "out.nii"
    save_volume(small_volume(), target)
    before = target.read_bytes()
    real = sitk.WriteImage

    def short_write(image, filename, *args, **kwargs):
        real(image, filename, *args, **kwargs)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) - 100)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    with pytest.raises(InputError, match="previous file is unchanged"):
        io.save_volume(small_volume(dtype=np.int32), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.nii"]


WRITERS_CHECK = textwrap.dedent("""
    # Every product writer under RLIMIT_FSIZE: a file may not grow past LIMIT bytes, so each second, larger
    # write is cut short by the kernel (EFBIG), as a full disk would cut it. Each must raise, keep the first
    # version byte for byte and leave no partial file.
    import json, os, resource, signal, sys, warnings
    from pathlib import Path
    import numpy as np, torch
    from tagseg.errors import InputError
    from tagseg.evaluate import CaseResult, ResultsWriter, write_results_csv
    from tagseg import train
    from tagseg.data.datasets import save_split_json
    from tagseg.data.preprocess import PreprocessedCache
    from tagseg.fs import write_json_atomic
    from tagseg.tags import text_encoder as te

    LIMIT = 64 << 10
    root = Path(sys.argv[1])
    row = lambda i: CaseResult(f"case{i:05d}", 0.5, 0.5, 10, 10, 0.1)
    big = [row(i) for i in range(2000)]
    class Encoder:
        id = "fake-encoder"
        def __init__(self, dim):
            self.dim = dim
    t_small = torch.nn.functional.normalize(torch.ones(8, 2), dim=0)
    t_big = torch.nn.functional.normalize(torch.ones(8192, 2), dim=0)

    def results_writer(path, small):
        with ResultsWriter(path) as writer:
            for result in ([row(0)] if small else big):
                writer.write(result)

    def cache(path, small):
        PreprocessedCache._write_file(path.parent, path.name, lambda f: np.save(f, np.zeros(8 if small else 65536)))

    def text_cache(path, small):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = t_small if small else t_big
            te._write_cache(path, t, Encoder(t.shape[0]), "liver")
        if caught:
            raise InputError(str(caught[0].message))

    WRITERS = {
        "results.csv": lambda p, small: write_results_csv([row(0)] if small else big, p),
        "rows.csv": results_writer,
        "log.csv": lambda p, small: train._append_csv(p, {"epoch": 1, "loss": "0.5" if small else "9" * (1 << 17)}),
        "state.pt": lambda p, small: train._atomic_torch_save({"w": torch.zeros(8 if small else 65536)}, p),
        "config.json": lambda p, small: write_json_atomic(p, {"x": "y" * (8 if small else 1 << 17)}),
        "split.json": lambda p, small: save_split_json(p, {"train": ["a"] if small else [f"c{i}" for i in range(20000)],
                                                         "val": ["b"], "test": ["c"]}),
        "image.npy": cache,
        "text.safetensors": text_cache,
    }
    report = {}
    for name, write in WRITERS.items():
        folder = root / name.replace(".", "_")
        folder.mkdir()
        target = folder / name
        write(target, True)
        before = target.read_bytes()
        assert len(before) < LIMIT, (name, len(before))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        try:
            write(target, False)
            outcome = "no error"
        except InputError as exc:
            outcome = str(exc)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        after = target.read_bytes()
        if name == "rows.csv":        # row by row, the previous file is the table up to the last row that fit
            rows = after.count(b"\\n") - 1
            write_results_csv(big[:rows], root / "expected.csv")
            before = (root / "expected.csv").read_bytes()
            assert rows > 1, rows
        report[name] = {"error": outcome, "intact": after == before, "files": sorted(os.listdir(folder))}
    print(json.dumps(report))
""")


def test_every_product_writer_fails_a_short_write_and_keeps_the_previous_file(tmp_path):
    """CSV results (all at once and row by row), the training log, state and config, a split, the
    preprocessing cache and the text-embedding cache: a write the kernel cuts short is an error naming the
    OS's reason, never a shorter file under the real name."""
    (tmp_path / "check.py").write_text(WRITERS_CHECK, encoding="utf-8")
    (tmp_path / "files").mkdir()
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "check.py"), str(tmp_path / "files")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 8
    for name, outcome in report.items():
        error = outcome["error"]
        assert f"{name}: cannot write" in error or "could not cache text embeddings at" in error, (name, outcome)
        assert "EFBIG" in error or "requested and" in error, (name, outcome)  # numpy names no errno
        assert outcome["intact"], (name, outcome)
        assert outcome["files"] == [name], (name, outcome)


def test_no_input_can_be_the_output(tmp_path):
    image = tmp_path / "image.nii.gz"
    anatomy = tmp_path / "organ.nii.gz"
    save_volume(small_volume(), image)
    save_volume(small_volume().with_array(np.ones((8, 16, 16), np.uint8)), anatomy)
    link = tmp_path / "hardlink.nii.gz"
    os.link(anatomy, link)
    symlink = tmp_path / "symlink.nii.gz"
    symlink.symlink_to(image)
    before = {p: p.read_bytes() for p in (image, anatomy)}
    for output, fragment in (
        (anatomy, "overwrite the input"),
        (link, "overwrite the input"),
        (symlink, "overwrite the input image"),
    ):
        result, _ = run_limited(
            tmp_path,
            "segment",
            image,
            "-o",
            output,
            "--anatomy",
            anatomy,
            "--point",
            "15,-12,36",
            env={"HARDEN_FAKE_PREDICT": "1"},
        )
        assert_refused(result, fragment)
    assert {p: p.read_bytes() for p in before} == before


def test_a_file_read_can_never_be_replaced_within_a_command(tmp_path):
    from tagseg.errors import TagsegError
    from tagseg.paths import guarding_inputs

    path = tmp_path / "read.nrrd"
    save_volume(small_volume(), path)
    alias = tmp_path / "alias.nrrd"
    os.link(path, alias)
    with guarding_inputs():  # what the CLI wraps every command in
        load_volume(path)
        for target in (path, alias):
            with pytest.raises(TagsegError, match="would overwrite the input"):
                save_volume(small_volume(), target)
    # outside a command (the API, a server, Slicer) rewriting a file read earlier is legitimate
    load_volume(path)
    save_volume(small_volume(), path)
    assert load_volume(path).shape_kji == small_volume().shape_kji


def test_stale_partial_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tagseg-{dead.pid}-deadbeef.part.nii.gz"
    live = tmp_path / f".tagseg-{os.getppid()}-cafe0123.part.nii.gz"
    other = tmp_path / ".someone-else.part"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_volume(small_volume(), tmp_path / "out.nii.gz")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_parts(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_during_the_write_remove_the_partial_file(tmp_path, signum):
    image = tmp_path / "image.nii.gz"
    save_volume(small_volume(), image)
    out = tmp_path / "out" / "m.nii.gz"
    driver = tmp_path / "harden_driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = dict(
        os.environ,
        PYTHONPATH=str(MODULE_DIR),
        HF_HUB_OFFLINE="1",
        HARDEN_AS_LIMIT=str(AS_LIMIT),
        HARDEN_REPORT=str(tmp_path / "r.json"),
        HARDEN_FAKE_PREDICT="1",
        HARDEN_SLOW_WRITE="1",
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver), "segment", str(image), "-o", str(out), "--point", "15,-12,36"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a runner started in the background passes SIGINT on ignored, and tagseg respects that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and "WRITING" not in (proc.stdout.readline() or ""):
        pass
    assert [p.name for p in out.parent.iterdir()][0].startswith(".tagseg-")
    proc.send_signal(signum)
    proc.wait(timeout=120)  # a lost signal would let the 60 s write finish and leave the output: caught below
    assert proc.returncode != 0
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_atomic_file_refuses_an_input_and_cleans_created_folders(tmp_path):
    target = tmp_path / "x" / "y" / "out.bin"
    with pytest.raises(RuntimeError):
        with AtomicFile(target, suffix=".bin") as part:
            part.path.write_bytes(b"half")
            raise RuntimeError("crash")
    assert not (tmp_path / "x").exists()
    with AtomicFile(target, suffix=".bin") as part:
        part.path.write_bytes(b"")
        with pytest.raises(InputError, match="empty"):
            part.commit()
    assert not (tmp_path / "x").exists()


# ---- (4) exact bounds ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [7, 8])
def test_nearest_index_at_both_faces(n):
    assert geometry.nearest_index(-0.5, n) == 0
    assert geometry.nearest_index(-0.5 - 1e-7, n) == 0  # clipped even just outside
    assert geometry.nearest_index(n - 0.5, n) == n - 1  # even n: 7.5 -> 7, never 8
    assert geometry.nearest_index(n - 0.5 + 1e-7, n) == n - 1
    assert geometry.nearest_index(n - 1.5, n) == n - 1  # halves round up, not to even
    assert geometry.nearest_index(2.5, n) == 3 and geometry.nearest_index(3.5, n) == 4
    assert list(geometry.nearest_index([0.49, 0.5, n - 1.0], n)) == [0, 1, n - 1]
    assert geometry.nearest_voxel([[n - 0.5, -0.5, 15.5]], (n, 16, 16)).tolist() == [[n - 1, 0, 15]]


@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (0.77, 0.77, 3.33)])
def test_a_click_anywhere_within_the_printed_bounds_works(n, spacing):
    volume = small_volume(shape=(n, 16, 16), spacing=spacing)
    text = volume.describe_bounds()
    numbers = [
        float(v)
        for v in text.replace("R", "")
        .replace("A", "")
        .replace("S", "")
        .replace("mm", "")
        .replace(",", " ")
        .replace("..", " ")
        .split()
    ]
    lo, hi = np.array(numbers[0::2]), np.array(numbers[1::2])
    for corner in np.array(np.meshgrid(*zip(lo, hi, strict=False))).T.reshape(-1, 3):
        make_point(volume, corner)
        index = geometry.nearest_voxel(volume.ras_to_kji(corner), volume.shape_kji)[0]
        assert np.all((index >= 0) & (index < np.array(volume.shape_kji)))
    from tagseg.errors import PromptError

    with pytest.raises(PromptError, match="outside the volume"):
        make_point(volume, hi + [0, 0, 0.2])


# ---- (3) DICOM and NIfTI geometry --------------------------------------------------------------------------------
def write_dicom_series(
    folder: Path,
    positions,
    uid="1.2.826.0.1.3680043.2.1125.1",
    description="axial",
    prefix="s",
    size=(16, 12),
    step_value: int = 1,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for index, z in enumerate(positions):
        array = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) + index * step_value).astype(np.int16)
        image = sitk.GetImageFromArray(array[None])
        image.SetSpacing((0.8, 0.8, 1.0))
        for tag, value in (
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.9"),
            ("0020|000e", uid),
            ("0008|103e", description),
            ("0020|0013", str(index + 1)),
            ("0020|0032", f"-10\\-20\\{z}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", "0.8\\0.8"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
            ("0008|0018", f"{uid}.{index + 1}"),
        ):
            image.SetMetaData(tag, value)
        path = folder / f"{prefix}{index:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    return files


def test_dicom_even_series_loads_with_its_spacing(tmp_path):
    write_dicom_series(tmp_path / "ct", [0, 2.5, 5, 7.5, 10])
    volume = load_volume(tmp_path / "ct")
    assert volume.shape_kji == (5, 12, 16)
    assert np.allclose(volume.spacing_ijk, (0.8, 0.8, 2.5))
    assert np.allclose(volume.ijk_to_ras[:3, 3], (10, 20, 0))  # LPS (-10, -20, 0) in RAS
    assert int(volume.array[4, 0, 0]) == 4  # slices in position order


@pytest.mark.parametrize(
    "positions, fragment",
    [
        ([0, 2, 4, 6, 20, 22, 24, 60], "not evenly spaced"),
        ([0, 2, 4, 4, 6], "duplicate slice position"),
    ],
)
def test_dicom_uneven_or_duplicate_positions_are_refused(tmp_path, positions, fragment):
    write_dicom_series(tmp_path / "ct", positions)
    with pytest.raises(InputError, match=fragment) as info:
        load_volume(tmp_path / "ct")
    assert "20" in str(info.value) or "4" in str(info.value)


def test_dicom_uneven_series_is_resampled_only_when_asked(tmp_path):
    positions = [0, 2, 4, 6, 20, 22, 24, 60]
    write_dicom_series(tmp_path / "ct", positions, step_value=140)
    with pytest.raises(InputError, match="resample_uneven=True"):
        load_volume(tmp_path / "ct")
    volume = load_volume(tmp_path / "ct", resample_uneven=True)
    assert volume.shape_kji == (31, 12, 16) and np.allclose(volume.spacing_ijk, (0.8, 0.8, 2.0))
    assert np.allclose(volume.ijk_to_ras[:3, 3], (10, 20, 0))
    base = np.arange(16 * 12).reshape(12, 16)
    s_mm = np.arange(31) * 2.0
    acquired = np.interp(s_mm, positions, np.arange(8) * 140)  # linear between neighbouring slices
    assert np.array_equal(volume.array, base[None] + np.rint(acquired).astype(int)[:, None, None])
    assert int(volume.array[5, 0, 0]) == 460 and int(volume.array[-1, 0, 0]) == 7 * 140
    assert "resampled onto 31 slices 2 mm apart" in volume.meta["warnings"][0]
    assert "largest gap 36 mm" in volume.meta["warnings"][0]


def test_dicom_resampling_never_hides_duplicates_or_changes_an_even_series(tmp_path):
    write_dicom_series(tmp_path / "dup", [0, 2, 4, 4, 6])
    with pytest.raises(InputError, match="duplicate slice position"):
        load_volume(tmp_path / "dup", resample_uneven=True)
    write_dicom_series(tmp_path / "even", [0, 2.5, 5, 7.5, 10])
    even = load_volume(tmp_path / "even", resample_uneven=True)
    assert even.shape_kji == (5, 12, 16) and "warnings" not in even.meta
    assert np.array_equal(even.array, load_volume(tmp_path / "even").array)


def test_segment_resamples_an_uneven_dicom_series_when_the_flag_is_given(tmp_path):
    write_dicom_series(tmp_path / "ct", [0, 2, 4, 6, 20, 22, 24, 60])
    out = tmp_path / "m.nii.gz"
    args = ("segment", tmp_path / "ct", "-o", out, "--point", "5,15,30")
    result, _ = run_limited(tmp_path, *args, env={"HARDEN_FAKE_PREDICT": "1"})
    assert_refused(result, "not evenly spaced", "--resample-uneven-dicom")
    assert not out.exists()
    result, _ = run_limited(tmp_path, *args, "--resample-uneven-dicom", env={"HARDEN_FAKE_PREDICT": "1"})
    assert result.returncode == 0, result.stderr
    assert "tagseg: warning:" in result.stderr and "resampled onto 31 slices" in result.stderr
    mask = load_volume(out)
    assert mask.shape_kji == (31, 12, 16) and np.allclose(mask.spacing_ijk, (0.8, 0.8, 2.0))


def test_dicom_unreadable_slice_is_refused(tmp_path):
    files = write_dicom_series(tmp_path / "ct", [0, 2, 4, 6, 8])
    files[2].write_bytes(files[2].read_bytes()[:400])
    with pytest.raises(InputError, match=r"s002.dcm.*(cannot be read|not evenly)|not evenly"):
        load_volume(tmp_path / "ct")


def test_dicom_two_series_are_listed_and_one_can_be_picked(tmp_path):
    write_dicom_series(tmp_path / "ct", [0, 2, 4], uid="1.2.3.4.1", description="arterial", prefix="a")
    write_dicom_series(tmp_path / "ct", [0, 3, 6, 9], uid="1.2.3.4.2", description="venous", prefix="v")
    with pytest.raises(InputError, match=r"2 DICOM series.*series=UID") as info:
        load_volume(tmp_path / "ct")
    message = str(info.value)
    assert "1.2.3.4.1 ('arterial', 3 slices)" in message and "1.2.3.4.2 ('venous', 4 slices)" in message
    assert load_volume(tmp_path / "ct", series="1.2.3.4.2").shape_kji == (4, 12, 16)


def test_nifti_sform_wins_over_a_disagreeing_qform_and_outputs_agree(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine_q = np.diag([1.0, 1.0, 2.0, 1.0])
    affine_s = affine_q.copy()
    affine_s[:3, 3] = (300.0, 0.0, 0.0)
    img = nib.Nifti1Image(np.zeros((16, 12, 8), np.int16), affine_s)
    img.set_qform(affine_q, code=1)
    img.set_sform(affine_s, code=2)
    path = tmp_path / "two.nii.gz"
    nib.save(img, path)
    volume = load_volume(path)
    assert np.allclose(volume.ijk_to_ras, affine_s, atol=1e-3)
    assert "qform and sform disagree" in volume.meta["warnings"][0]
    out = tmp_path / "out.nii.gz"
    save_volume(volume.with_array(np.ones(volume.shape_kji, np.uint8)), out)
    written = nib.load(out)
    assert np.allclose(written.get_qform(), affine_s, atol=1e-3)
    assert np.allclose(written.get_sform(), affine_s, atol=1e-3)


# ---- (5)/(6) special files and text --------------------------------------------------------------------------------
def test_fifo_is_refused_by_type_without_opening(tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    result, _ = run_limited(tmp_path, "segment", fifo, "-o", tmp_path / "o.nii.gz", "--point", "0,0,0", timeout=60)
    assert_refused(result, "named pipe")
    image = tmp_path / "image.nii.gz"
    save_volume(small_volume(), image)
    model = tmp_path / "pipe.safetensors"
    os.mkfifo(model)
    result, _ = run_limited(
        tmp_path,
        "segment",
        image,
        "-o",
        tmp_path / "o.nii.gz",
        "--point",
        "15,-12,36",
        "--model",
        model,
        "--device",
        "cpu",
        timeout=120,
    )
    line = assert_refused(result, "named pipe")
    assert "folder" not in line


def test_escape_sequences_in_paths_are_not_echoed(tmp_path):
    evil = tmp_path / "\x1b]0;pwned\x07\x1b[31mred\x1b[0m.nii.gz"
    result, _ = run_limited(tmp_path, "segment", evil, "-o", tmp_path / "o.nii.gz", "--point", "0,0,0")
    assert_refused(result, "file not found")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_validation_regexes_are_anchored_at_the_very_end():
    from tagseg.tags import checkpoint

    assert checkpoint._ANATOMY_RE.match("liver")
    assert not checkpoint._ANATOMY_RE.match("liver\n")
    assert not checkpoint._SHA_RE.match("0" * 64 + "\n")


def test_library_noise_becomes_one_line(tmp_path):
    """A 1-bit NIfTI: nifticlib prints its own lines on stderr; the user sees only ours."""
    path = tmp_path / "onebit.nii"
    path.write_bytes(_nifti1_header((8, 8, 8), datatype=1, bitpix=1) + b"\x00" * 64)
    result, _ = run_limited(tmp_path, "segment", path, "-o", tmp_path / "o.nii.gz", "--point", "0,0,0")
    assert_refused(result, str(path))


def test_non_regular_detached_data_file_is_refused(tmp_path):
    fifo = tmp_path / "data.raw"
    os.mkfifo(fifo)
    header = tmp_path / "image.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = data.raw\n",
        encoding="utf-8",
    )
    with pytest.raises(InputError, match="named pipe"):
        load_volume(header)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
