"""A headless Slicer scene for tests, built from slicer-core (the real MRML stack on PyPI).

It wires the scene, the application logic and the Colors, Volumes, Segmentations, Markups and
SubjectHierarchy module logics the way Slicer does at start-up, and installs the `slicer.mrmlScene` /
`slicer.modules` shim that `slicer.util`'s array functions need outside the application. No pytest here,
so Slicer-side scripts can use it too.
"""

from __future__ import annotations

import types

import slicer


def make_scene() -> types.SimpleNamespace:
    """A fresh scene with module logics registered; also becomes `slicer.mrmlScene` (the shim)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()

    def register(logic, name: str):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    register(color_logic, "Colors")
    volumes_logic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations_logic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    markups_logic = register(slicer.vtkSlicerMarkupsLogic(), "Markups")
    subject_hierarchy_logic = register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")

    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations_logic),
        volumes=types.SimpleNamespace(logic=lambda: volumes_logic),
        markups=types.SimpleNamespace(logic=lambda: markups_logic),
    )
    return types.SimpleNamespace(
        scene=scene,
        app_logic=app_logic,
        color_logic=color_logic,
        volumes_logic=volumes_logic,
        segmentations_logic=segmentations_logic,
        markups_logic=markups_logic,
        subject_hierarchy_logic=subject_hierarchy_logic,
    )
