"""Slicer's Python loaders, re-implemented from their C++ source, to run our module through them without Slicer.

How Slicer (read at tags v5.8.1, v5.10.0, v5.12.3 and main) turns a file into a scripted module or effect:

- `qSlicerScriptedLoadableModule::setPythonSource(path)` (Base/QTGUI): module and class name = the file's base
  name. Class looked up on `sys.modules[name]`; if absent, the file is loaded with
  `qSlicerScriptedUtils::loadSourceAsModule(name, path)`, `sys.modules[name]` fetched again, the class
  instantiated with the C++ module object. The module's folder is on sys.path (the module factory appends it).
- `qSlicerSegmentEditorScriptedEffect::setPythonSource(path)` (Modules/Loadable/Segmentations/EditorEffects):
  module name = the name of the file's FOLDER (`TAGSSegmentLib`), class name = the file's base name with
  "Effect" appended unless it ends with it. The lookup swallows every exception (`PyObject_HasAttrString`).
  * 5.8: `PyImport_AddModule(name)` (returns `sys.modules[name]`, or creates and inserts an empty module),
    class looked up there; else `imp.load_source(name, path)` and the class looked up on the SAME module
    object again (no re-fetch).
  * 5.10 and later: `sys.modules.get(name)`; else `loadSourceAsModule` and `sys.modules[name]` re-fetched.
  Then the class is instantiated with the C++ effect object, and `slicer.<name>` is set to the instance.
  An effect's `clone()` builds a new C++ effect and calls `setPythonSource` again.
- `qSlicerScriptedUtils::loadSourceAsModule(name, path)` (Base/QTCore):
  * 5.8: runs `imp.load_source(name, path)` (Python 3.9): when `name` is in sys.modules, the file is executed
    INTO that existing module after its `__name__`, `__loader__`, `__package__`, `__spec__`, `__file__` and
    `__cached__` are reset from the file's spec (`__path__` is kept: a file spec has no search locations);
    otherwise a new module is made, inserted in sys.modules and executed.
  * 5.10 and later: `spec_from_file_location(name, path)`, `module_from_spec`, `sys.modules[name] = module`,
    `spec.loader.exec_module(module)`: whatever module had that name (a package, say) is replaced.

Only what the real application provides is stubbed: PythonQt's `qt` and `ctk`, the `slicer.app` object, the
`slicer.ScriptedLoadableModule` base classes, the `SegmentEditorEffects` base class and the C++ effect
wrapper module `qSlicerSegmentationsEditorEffectsPythonQt` (whose `setPythonSource` is the loader above).
`slicer` itself is slicer-core, `vtk` is VTK.

Run as a script it performs one scenario in a fresh interpreter and prints one JSON line:
    python slicer_loader.py SCENARIO VARIANT MODULE_DIR [PACKAGE]
SCENARIO: `register` (load TAGSSegment.py, fire startupCompleted, clone the effect, import every submodule),
`fallback` (make the effect loader take its fallback on a package that did not expose the class), `cold` (register
the effect before anything imported the package), `events` (drive the registered effect's
processInteractionEvents). VARIANT: `5.8` or `5.10`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import pkgutil
import sys
import traceback
import types

VARIANTS = ("5.8", "5.10")


# ----------------------------------------------------------------------------------------------------------------
# the loaders


def _has_attr(obj, name: str) -> bool:
    """PyObject_HasAttrString: False on any exception raised while looking the attribute up."""
    try:
        getattr(obj, name)
    except Exception:
        return False
    return True


def _imp_load_source(name: str, path: str) -> types.ModuleType:
    """Python 3.9's `imp.load_source(name, path)`, which Slicer 5.8 runs (the `imp` module is gone in 3.12)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules.get(name)
    if module is not None:  # importlib._bootstrap._exec: reinitialise the module from the spec, run in place
        module.__name__ = spec.name
        module.__loader__ = spec.loader
        module.__package__ = spec.parent
        module.__spec__ = spec
        if spec.submodule_search_locations is not None:
            module.__path__ = spec.submodule_search_locations
        module.__file__ = spec.origin
        module.__cached__ = spec.cached
        try:
            spec.loader.exec_module(module)
        finally:
            module = sys.modules.pop(name)  # moved to the end of sys.modules, as _exec does
            sys.modules[name] = module
    else:  # importlib._bootstrap._load
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        module = sys.modules[name]
    module.__loader__ = importlib.machinery.SourceFileLoader(name, path)
    module.__spec__.loader = module.__loader__
    return module


def load_source_as_module(variant: str, name: str, path: str) -> None:
    """qSlicerScriptedUtils::loadSourceAsModule."""
    if variant == "5.8":
        _imp_load_source(name, path)
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _base_name(path: str) -> str:
    """QFileInfo::baseName: the file name up to its first dot."""
    return os.path.basename(path).split(".", 1)[0]


def effect_class(variant: str, path: str):
    """The class qSlicerSegmentEditorScriptedEffect::setPythonSource(path) instantiates, found the way it does."""
    module_name = os.path.basename(os.path.dirname(path))
    class_name = _base_name(path)
    if not class_name.endswith("Effect"):
        class_name += "Effect"
    if variant == "5.8":
        module = sys.modules.get(module_name)
        if not isinstance(module, types.ModuleType):  # PyImport_AddModule
            module = sys.modules[module_name] = types.ModuleType(module_name)
        if not _has_attr(module, class_name):
            load_source_as_module(variant, module_name, path)
    else:
        module = sys.modules.get(module_name)
        if module is None or not _has_attr(module, class_name):
            load_source_as_module(variant, module_name, path)
            module = sys.modules[module_name]
    if not _has_attr(module, class_name):
        raise RuntimeError(f"class {class_name} was not found in {path}")
    return module_name, getattr(module, class_name)


# ----------------------------------------------------------------------------------------------------------------
# stubs for the application


class _Anything:
    """A PythonQt object the tested code only constructs, connects and configures."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")

    class QSettings(_Anything):
        def value(self, key, default=None):
            return default

        def setValue(self, key, value):  # noqa: N802 (Qt name)
            pass

    qt.QSettings = QSettings
    qt.__getattr__ = lambda name: _Anything  # QTimer, QIcon, Qt, ...: unused beyond construction here
    return qt


class FakeApp:
    """`slicer.app`: records signal connections so the test can emit startupCompleted()."""

    def __init__(self):
        self.connections: dict[str, list] = {}

    def connect(self, signal, slot):
        self.connections.setdefault(signal, []).append(slot)

    def emit(self, signal):
        for slot in self.connections.get(signal, []):
            slot()

    def testingEnabled(self):  # noqa: N802 (Qt name)
        return True


def install_stubs(variant: str) -> types.SimpleNamespace:
    import slicer

    registered: list = []

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):  # noqa: N803 (Slicer's name)
            self.scriptedEffect = scriptedEffect

        def register(self):
            registered.append(self)

    effects_base = types.ModuleType("SegmentEditorEffects")
    effects_base.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    effects_base.__path__ = []  # a package in Slicer; `SegmentEditorEffects.AbstractScriptedSegmentEditorEffect`
    abstract = types.ModuleType("SegmentEditorEffects.AbstractScriptedSegmentEditorEffect")
    abstract.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect

    class qSlicerSegmentEditorScriptedEffect:  # noqa: N801 (Slicer's name)
        """The C++ effect: setPythonSource finds and instantiates the Python class."""

        def __init__(self, parent):
            self._self = None
            self.name = ""

        def setPythonSource(self, path):  # noqa: N802
            module_name, cls = effect_class(variant, path)
            self._self = cls(self)
            setattr(slicer, module_name, self._self)
            return True

        def self(self):
            return self._self

    wrappers = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    wrappers.qSlicerSegmentEditorScriptedEffect = qSlicerSegmentEditorScriptedEffect

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        """Slicer's (5.10, 5.12): a cooperative `super().__init__()` and the module name from the class name."""

        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    for name in ("ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *args, **kwargs: None}))

    app = FakeApp()
    sys.modules.update(
        {
            "qt": _qt_module(),
            "ctk": types.ModuleType("ctk"),
            "SegmentEditorEffects": effects_base,
            abstract.__name__: abstract,
            wrappers.__name__: wrappers,
            scripted.__name__: scripted,
        }
    )
    slicer.app = app
    slicer.ScriptedLoadableModule = scripted
    return types.SimpleNamespace(app=app, registered=registered, wrappers=wrappers)


def load_scripted_module(variant: str, path: str):
    """qSlicerScriptedLoadableModule::setPythonSource + instantiation with a stand-in for the C++ module."""
    name = _base_name(path)
    module = sys.modules.get(name)
    if module is None or not _has_attr(module, name):
        load_source_as_module(variant, name, path)
        module = sys.modules[name]
    return getattr(module, name)(types.SimpleNamespace())


def _module_logic_report(stubs, module_name: str, effect) -> dict:
    """The module logic as the panel makes it, found by the effect the way Slicer finds it
    (`slicer.util.getModuleLogic` returns the panel's `logic` for a scripted module)."""
    import slicer

    logic = getattr(sys.modules[module_name], f"{module_name}Logic")()
    asked = []
    slicer.util.getModuleLogic = lambda name: asked.append(name) or logic

    class FakeTagsLogic:
        def predict_async(self, **kwargs):
            return ("future", sorted(kwargs))

    logic.replace_tags_logic(FakeTagsLogic())
    started = effect._startPrediction({"kwargs": {"volume_node": None, "text": "liver tumor"}})
    released = [slot for slot in stubs.app.connections.get("aboutToQuit()", [])]
    return {
        "module_name": logic.moduleName,
        "device": logic.device(),
        "engine": logic.engine_settings()["mode"],
        "effect_started": list(started[1]),
        "asked": asked[:1],
        "quit_releases": any(getattr(slot, "__self__", None) is logic for slot in released),
    }


# ----------------------------------------------------------------------------------------------------------------
# scenarios


def _add_module_path(module_dir: str) -> None:
    """What Slicer's scripted module factory does (it appends; first here, so that a copy of the module is
    tested rather than the one an editable install put on sys.path)."""
    sys.path.insert(0, module_dir)


def import_every_submodule(package: str, package_dir: str) -> list[str]:
    """Import each submodule in the two forms the code uses; returns the names imported."""
    names = sorted(info.name for info in pkgutil.iter_modules([package_dir]))
    for name in names:
        importlib.import_module(f"{package}.{name}")
        exec(f"from {package} import {name}", {})
    return names


def _package_report(package: str) -> dict:
    module = sys.modules.get(package)
    return {
        "package_has_path": hasattr(module, "__path__"),
        "package_effect_is_class": isinstance(getattr(module, "SegmentEditorEffect", None), type),
    }


def scenario_register(variant: str, module_dir: str, package: str) -> dict:
    stubs = install_stubs(variant)
    _add_module_path(module_dir)
    load_scripted_module(variant, os.path.join(module_dir, f"{os.path.basename(module_dir)}.py"))
    stubs.app.emit("startupCompleted()")  # TAGSSegment registers its effect here
    assert len(stubs.registered) == 1, f"{len(stubs.registered)} effects registered"
    lib_before = {
        name: module
        for name, module in sys.modules.items()
        if name.startswith(f"{package}.") and not name.endswith(".SegmentEditorEffect")
    }
    clone = stubs.registered[0].clone()  # what every Segment Editor widget does
    report = {
        "registered": type(stubs.registered[0]).__name__,
        "cloned": type(clone.self()).__name__,
        "effect_name": clone.name,
    }
    if package == "TAGSSegmentLib":
        report["module_logic"] = _module_logic_report(stubs, os.path.basename(module_dir), clone.self())
    report["submodules"] = import_every_submodule(package, os.path.join(module_dir, package))
    report["lib_modules_kept"] = all(sys.modules.get(name) is module for name, module in lib_before.items())
    report.update(_package_report(package))
    return report


def scenario_fallback(variant: str, module_dir: str, package: str) -> dict:
    """The package is imported, then the effect loader's fallback runs on the effect file (what happens when
    the class lookup fails), then a clone and every submodule import must still work."""
    stubs = install_stubs(variant)
    _add_module_path(module_dir)
    importlib.import_module(f"{package}.status_log")
    path = os.path.join(module_dir, package, "SegmentEditorEffect.py")
    load_source_as_module(variant, package, path)
    effect = stubs.wrappers.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(path)
    report = {"registered": type(effect.self()).__name__}
    report["submodules"] = import_every_submodule(package, os.path.join(module_dir, package))
    report.update(_package_report(package))
    report.pop("package_effect_is_class")  # the fallback module holds its own copy of the class
    return report


class _Interactor:
    def __init__(self, xy, control=False):
        self.xy, self.control = xy, control

    def GetEventPosition(self):  # noqa: N802 (VTK names)
        return self.xy

    def GetControlKey(self):  # noqa: N802
        return self.control

    def GetShiftKey(self):  # noqa: N802
        return False


class _SliceView:
    def className(self):  # noqa: N802 (Qt name)
        return "qMRMLSliceWidget"

    def sliceLogic(self):  # noqa: N802
        node = types.SimpleNamespace(GetID=lambda: "vtkMRMLSliceNodeRed")
        return types.SimpleNamespace(GetSliceNode=lambda: node)


def scenario_events(variant: str, module_dir: str, package: str) -> dict:
    """Two quick clicks as Qt delivers them to VTK (press, release, double click, release) on a Segment Editor
    with nothing selected: every event is answered, and each click reaches the prompt code, which says
    "Select a segmentation ..." once per click."""
    import vtk

    stubs = install_stubs(variant)
    _add_module_path(module_dir)
    status_log = importlib.import_module(f"{package}.status_log")  # TAGSSegment.py imports it before registering
    effect = stubs.wrappers.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(os.path.join(module_dir, package, "SegmentEditorEffect.py"))
    tags = effect.self()
    effect.parameterSetNode = lambda: None  # a Segment Editor with no segmentation selected
    tags.excludeButton = types.SimpleNamespace(checked=False)  # the one options widget clicks read
    view, xy = _SliceView(), (120, 80)
    answers = []
    before = len(status_log.log_history())
    for event in (
        "LeftButtonPressEvent",
        "LeftButtonReleaseEvent",
        "LeftButtonDoubleClickEvent",
        "LeftButtonReleaseEvent",
    ):
        answers.append(bool(tags.processInteractionEvents(_Interactor(xy), getattr(vtk.vtkCommand, event), view)))
    clicks = [line for line in status_log.log_history()[before:] if "Select a segmentation" in line]
    return {"answers": answers, "clicks": len(clicks)}


def scenario_cold(variant: str, module_dir: str, package: str) -> dict:
    """The effect registered before anything imported the package (5.8 then creates an empty module of the
    package's name and loads the file into it; 5.10 loads it as a new module of that name)."""
    stubs = install_stubs(variant)
    _add_module_path(module_dir)
    effect = stubs.wrappers.qSlicerSegmentEditorScriptedEffect(None)
    effect.setPythonSource(os.path.join(module_dir, package, "SegmentEditorEffect.py"))
    clone = effect.self().clone()
    report = {"registered": type(effect.self()).__name__, "cloned": type(clone.self()).__name__}
    report["submodules"] = import_every_submodule(package, os.path.join(module_dir, package))
    report.update(_package_report(package))
    report.pop("package_effect_is_class")
    return report


SCENARIOS = {
    "register": scenario_register,
    "fallback": scenario_fallback,
    "cold": scenario_cold,
    "events": scenario_events,
}


def main(argv: list[str]) -> int:
    scenario, variant, module_dir = argv[:3]
    package = argv[3] if len(argv) > 3 else f"{os.path.basename(module_dir)}Lib"
    if variant not in VARIANTS:
        raise SystemExit(f"variant must be one of {VARIANTS}")
    try:
        report = {"ok": True, **SCENARIOS[scenario](variant, os.path.abspath(module_dir), package)}
    except Exception as exc:
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
