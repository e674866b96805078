"""Support code of the TAGSSegment module: the Segment Editor effect and the GUI-free modules it and the panel use.

GUI-free, tested in CI: `logic` (MRML <-> engine, the TAGS logic classes), `engine` (the engine exchange),
`module_logic` (owns the TAGS logic; the module logic in TAGSSegment.py is built on it), `settings`, `naming`,
`prompts`, `prediction_queue`, `slice_boxes`, `markers`, `wording`, `status_log` and `install`.

Slicer finds a scripted effect by the folder and file name of the path given to `setPythonSource`: it looks for
the class `SegmentEditorEffect` as an attribute of `sys.modules["TAGSSegmentLib"]`, and only when that lookup
fails loads the file itself under the package's name. Since Slicer 5.10 that load puts a plain module in
`sys.modules["TAGSSegmentLib"]`, so the package (and every later `import TAGSSegmentLib.logic`) would be gone.
Slicer's effect template avoids the load by exposing the class from the package; so does this package, lazily,
because the effect imports Qt and the Segment Editor, which the GUI-free submodules and their CI tests
must never import. `Testing/Python/slicer_loader.py` runs Slicer's loaders against this package.
"""

import importlib
import types

EFFECT_CLASS = "SegmentEditorEffect"  # also the submodule's name: Slicer derives the class name from the file


class _Package(types.ModuleType):
    """Keeps the package attribute `SegmentEditorEffect` the class, as Slicer needs, even after the submodule
    of the same name is imported directly: the import system then binds the submodule to the package
    attribute, and this puts the submodule's class there instead (Slicer's template gets the same result
    with an eager `from .SegmentEditorEffect import *`)."""

    def __setattr__(self, name, value):
        if name == EFFECT_CLASS and isinstance(value, types.ModuleType):
            value = getattr(value, EFFECT_CLASS, value)
        super().__setattr__(name, value)


def __getattr__(name):
    if name != EFFECT_CLASS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    effect_class = getattr(importlib.import_module(f"{__name__}.{EFFECT_CLASS}"), EFFECT_CLASS)
    globals()[EFFECT_CLASS] = effect_class
    return effect_class


def _install_package_class():
    import sys

    module = sys.modules.get(__name__)
    if module is not None and type(module) is types.ModuleType:
        module.__class__ = _Package


_install_package_class()
