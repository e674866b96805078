"""One place for each concern: guards that fail when a second copy of a small utility (Dice, the atomic rename)
appears, or when the command modules start importing each other in a cycle; plus the shared helpers' contracts."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagseg.devices import is_out_of_memory
from tagseg.errors import one_line
from tagseg.evaluate import dice

SOURCE = Path(__file__).resolve().parents[2]  # TAGSSegment/
REPO = SOURCE.parent
ENGINE = SOURCE / "tagseg"
SLICER = SOURCE / "TAGSSegmentLib"
TESTS = SOURCE / "Testing" / "Python"
BENCH = REPO / "bench"


def _sources(*folders: Path) -> list[Path]:
    return sorted(
        p for folder in folders if folder.is_dir() for p in folder.rglob("*.py") if "__pycache__" not in p.parts
    )


def _offenders(pattern: str, folders: tuple[Path, ...], allowed: set[Path]) -> list[str]:
    regex = re.compile(pattern, re.MULTILINE)
    found = []
    for path in _sources(*folders):
        if path in allowed:
            continue
        for match in regex.finditer(path.read_text(encoding="utf-8")):
            line = path.read_text(encoding="utf-8").count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(REPO)}:{line}")
    return found


def test_os_replace_only_in_the_atomic_writer():
    """Every rename into place goes through tagseg.fs (checked, fsynced, cleaned up on failure)."""
    offenders = _offenders(r"\bos\.replace\(", (ENGINE, SLICER), {ENGINE / "fs.py"})
    assert not offenders, f"os.replace outside tagseg/fs.py (use tagseg.fs): {offenders}"


def test_one_dice():
    """tagseg.evaluate.dice is the only Dice: copies drift (they disagreed on two empty masks)."""
    offenders = _offenders(r"^\s*def _?dice\s*\(", (ENGINE, SLICER, TESTS, BENCH), {ENGINE / "evaluate.py"})
    assert not offenders, f"a Dice outside tagseg/evaluate.py (import tagseg.evaluate.dice): {offenders}"


def test_dice_convention():
    empty = np.zeros((2, 3, 4), np.uint8)
    full = np.ones_like(empty)
    assert dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    half = full.copy()
    half[0] = 0
    assert dice(full, half) == pytest.approx(2 * 12 / 36)
    assert dice(full * 7, full) == 1.0  # any nonzero voxel is inside


def test_one_line():
    assert one_line("a\nb\t c\x1b[31m d\x00") == "a b c [31m d"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(KeyError("x"), with_type=True) == "KeyError: 'x'"
    assert one_line(RuntimeError("first\nTraceback ..."), first_line=True) == "first"
    assert one_line("x" * 50, 10) == "x" * 10
    assert one_line("caf\udce9") == "caf?"  # an undecodable command-line byte


def test_out_of_memory_check_never_imports_torch():
    code = (
        "import sys; from tagseg.devices import is_out_of_memory as oom; "
        "assert oom(RuntimeError('CUDA out of memory. Tried to allocate 2 GiB')); "
        "assert not oom(ValueError('x')); "
        "assert oom(type('OutOfMemoryError', (RuntimeError,), {})('')); "
        "assert 'torch' not in sys.modules, 'imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SOURCE, timeout=120)
    assert is_out_of_memory(MemoryError("out of memory")) and not is_out_of_memory(OSError("disk full"))


def _modules(package: str) -> list[str]:
    root = ENGINE.joinpath(*package.split(".")[1:])
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(root)])]


@pytest.mark.parametrize(
    "module", ["tagseg.fs", "tagseg.paths", "tagseg.errors", "tagseg.devices", "tagseg.cli", "tagseg.train"]
)
def test_utility_modules_import_alone(module):
    """Each module imports first in a fresh interpreter: an import cycle would fail here."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=SOURCE, timeout=120)


def test_the_writer_has_one_name_in_one_module():
    """`tagseg.fs.atomic_write` only: no alias, no re-export from `tagseg.paths` where it used to live."""
    from tagseg import fs, paths

    assert not hasattr(fs, "write_atomic")
    assert not any(hasattr(paths, name) for name in ("atomic_write", "write_atomic", "AtomicFile", "WriteError"))


COMMAND_MODULES = _modules("tagseg.commands")


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_command_module_imports_alone(module):
    """Imported first in a fresh interpreter, a module in an import cycle meets a half-initialised partner."""
    code = f"import importlib, sys; importlib.import_module({module!r}); assert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run([sys.executable, "-c", code], cwd=SOURCE, timeout=120, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _imports(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports hide cycles too), as absolute names."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = package.split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_command_modules_form_no_import_cycle():
    """Within tagseg.commands imports only go one way: the package imports the commands, the commands import
    `common`/`outputs`, which import no command; and no engine module imports the command line."""
    root = ENGINE / "commands"
    graph = {}
    for name in COMMAND_MODULES:
        path = root / "__init__.py" if name == "tagseg.commands" else root / f"{name.rsplit('.', 1)[1]}.py"
        package = "tagseg.commands" if name == "tagseg.commands" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in _imports(path, package) if m in COMMAND_MODULES and m != name}
    seen, stack = set(), []

    def visit(node: str) -> None:
        assert node not in stack, f"import cycle: {' -> '.join(stack[stack.index(node) :] + [node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)
    engine = [
        p
        for p in _sources(ENGINE)
        if "commands" not in p.relative_to(ENGINE).parts and p.name != "cli.py" and p.name != "__main__.py"
    ]
    for path in engine:
        package = ".".join(("tagseg", *path.relative_to(ENGINE).parts[:-1]))
        bad = {
            m
            for m in _imports(path, package)
            if m in ("tagseg.commands", "tagseg.cli") or m.startswith(("tagseg.commands.", "tagseg.cli."))
        }
        assert not bad, f"{path.relative_to(REPO)} imports the command line: {sorted(bad)}"
