"""Packaging consistency: what Slicer packages, what pip installs and what the catalog says must agree.

A file missing from MODULE_PYTHON_SCRIPTS/RESOURCES is silently left out of the Slicer extension,
and an engine module that imports Slicer's GUI stack breaks the command line and the tests.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2]  # TAGSSegment/
REPO = MODULE_DIR.parent
ENGINE_DIR = MODULE_DIR / "tagseg"
SLICER_ONLY_MODULES = {
    "slicer",
    "qt",
    "ctk",
    "vtk",
    "vtkmodules",
    "PythonQt",
    "SegmentEditorEffects",
    "sitkUtils",
    "DICOMLib",
    "SampleData",
    "PyTorchUtils",
    "ScriptedLoadableModule",
    "mrml",
}
SLICER_ONLY_PREFIXES = ("qSlicer", "qMRML", "vtkSlicer", "vtkMRML")


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    lines = (line.split("#", 1)[0] for line in match.group(1).splitlines())
    return [word for line in lines for word in line.split()]


def cmake_settings(text: str) -> dict[str, str]:
    return {name: value for name, value in re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def s4ext_settings(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {pair[0]: (pair[1].strip() if len(pair) > 1 else "") for pair in pairs}


def module_cmake() -> str:
    return (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")


def test_every_module_python_file_is_packaged():
    listed = set(cmake_list(module_cmake(), "MODULE_PYTHON_SCRIPTS"))
    on_disk = {
        path.relative_to(MODULE_DIR).as_posix()
        for path in MODULE_DIR.rglob("*.py")
        if "Testing" not in path.relative_to(MODULE_DIR).parts
    }
    assert on_disk, "no module files found"
    missing = sorted(on_disk - listed)
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in TAGSSegment/CMakeLists.txt: {missing}"


def test_every_resource_is_packaged():
    listed = set(cmake_list(module_cmake(), "MODULE_PYTHON_RESOURCES"))
    data_files = [p for p in (MODULE_DIR / "tagseg").rglob("*") if p.suffix not in (".py", ".pyc")]
    on_disk = {
        path.relative_to(MODULE_DIR).as_posix()
        for path in [*(MODULE_DIR / "Resources").rglob("*"), *data_files]
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = sorted(on_disk - listed)
    assert not missing, f"add to MODULE_PYTHON_RESOURCES in TAGSSegment/CMakeLists.txt: {missing}"
    assert "Resources/requirements.txt" in listed


def test_module_cmake_builds_a_scripted_module_with_generic_tests():
    text = module_cmake()
    assert re.search(r"set\(MODULE_NAME\s+TAGSSegment\)", text)
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert call, "slicerMacroBuildScriptedModule missing"
    for part in ("NAME", "${MODULE_PYTHON_SCRIPTS}", "${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"):
        assert part in call.group(1)


def test_s4ext_agrees_with_the_root_cmake():
    cmake = cmake_settings((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    s4ext = s4ext_settings((REPO / "TAGSSegment.s4ext").read_text(encoding="utf-8"))
    pairs = {
        "category": "EXTENSION_CATEGORY",
        "homepage": "EXTENSION_HOMEPAGE",
        "depends": "EXTENSION_DEPENDS",
        "contributors": "EXTENSION_CONTRIBUTORS",
        "description": "EXTENSION_DESCRIPTION",
        "iconurl": "EXTENSION_ICONURL",
        "screenshoturls": "EXTENSION_SCREENSHOTURLS",
    }
    for key, variable in pairs.items():
        assert s4ext.get(key) == cmake.get(variable), f"{key} differs between TAGSSegment.s4ext and CMakeLists.txt"
    assert cmake["EXTENSION_CATEGORY"] == "Segmentation"
    assert cmake["EXTENSION_DEPENDS"] == "PyTorch"
    assert "Apache-2.0" in cmake["EXTENSION_DESCRIPTION"]
    assert s4ext["scm"] == "git" and s4ext["build_subdirectory"] == "." and s4ext["enabled"] == "1"
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for call in (
        "find_package(Slicer",
        "add_subdirectory(TAGSSegment)",
        "${Slicer_EXTENSION_GENERATE_CONFIG}",
        "${Slicer_EXTENSION_CPACK}",
    ):
        assert call in root


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_engine_imports_nothing_from_slicer():
    offenders = {}
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        bad = {
            name
            for name in _imported_modules(path)
            if name in SLICER_ONLY_MODULES or name.startswith(SLICER_ONLY_PREFIXES)
        }
        if bad:
            offenders[path.relative_to(MODULE_DIR).as_posix()] = sorted(bad)
    assert not offenders, f"the tagseg engine must stay GUI-free and Slicer-free: {offenders}"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _package_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_pyproject_declares_package_and_console_script():
    project = _pyproject()
    assert project["project"]["name"] == "tagseg"
    assert project["project"]["scripts"]["tagseg"] == "tagseg.commands:main"
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "TAGSSegment"}
    assert setuptools["packages"]["find"]["include"] == ["tagseg*"]
    assert (REPO / "LICENSE.txt").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_slicer_requirements_match_pyproject_without_torch():
    """Inside Slicer torch comes from the PyTorch extension; everything else must match the pip install."""
    runtime = {_package_name(r): r.replace(" ", "") for r in _pyproject()["project"]["dependencies"]}
    lines = (MODULE_DIR / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    slicer = {_package_name(r): r.replace(" ", "") for r in (line.split("#")[0].strip() for line in lines) if r}
    assert "torch" not in slicer and "torchvision" not in slicer
    runtime.pop("torch")
    assert slicer == runtime
