"""Prompt markers: the effect's points and boxes as locked markups, hidden from the Data module, never saved."""

from __future__ import annotations

from typing import Any

from TAGSSegmentLib.prompts import Prompts, Vec3

INCLUDE_COLOR: Vec3 = (0.20, 0.85, 0.30)
EXCLUDE_COLOR: Vec3 = (0.95, 0.25, 0.20)
BOX_COLOR: Vec3 = (1.00, 0.80, 0.20)


class PromptMarkers:
    """Shows the effect's prompts: green include points, red exclude points, yellow boxes. All locked, so a
    click on a marker never drags it; hidden from the Data module and not saved with the scene."""

    def __init__(self, scene: Any, prefix: str = "TAGS"):
        self.scene = scene
        self.prefix = prefix
        self._ids: dict[str, str] = {}
        self._box_ids: list[str] = []

    def _node(self, node_id: str | None) -> Any:
        return self.scene.GetNodeByID(node_id) if node_id and self.scene else None

    def _selection_node(self) -> Any:
        node = self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        return node if node is not None else self.scene.GetFirstNodeByClass("vtkMRMLSelectionNode")

    def _make(self, class_name: str, name: str, color: Vec3) -> Any:
        """A new marker node. The Markups logic makes every markups node added to the scene the active place
        list (`vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded`), so the user's next "place point" would land in
        this hidden node: the selection node's active place list and class are put back as they were."""
        selection = self._selection_node()
        previous = (
            (selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName())
            if selection is not None
            else None
        )
        node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
        if (
            selection is not None
            and (selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName()) != previous
        ):
            selection.SetReferenceActivePlaceNodeClassName(previous[1])
            selection.SetReferenceActivePlaceNodeID(previous[0])
        node.SetSaveWithScene(False)
        node.SetHideFromEditors(True)
        node.SetSelectable(False)
        node.SetLocked(True)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(color)
            display.SetColor(color)
            display.SetActiveColor(color)
            display.SetTextScale(0.0)
            display.SetHandlesInteractive(False)
            if hasattr(display, "SetFillOpacity"):
                display.SetFillOpacity(0.08)
        return node

    def _points(self, key: str, name: str, color: Vec3) -> Any:
        node = self._node(self._ids.get(key))
        if node is None:
            node = self._make("vtkMRMLMarkupsFiducialNode", name, color)
            self._ids[key] = node.GetID()
        return node

    def show(self, prompts: Prompts) -> None:
        """Make the markers match `prompts` (few prompts, so rebuild rather than diff)."""
        for key, name, color, points in (
            ("include", f"{self.prefix} include", INCLUDE_COLOR, prompts.include),
            ("exclude", f"{self.prefix} exclude", EXCLUDE_COLOR, prompts.exclude),
        ):
            node = self._node(self._ids.get(key))
            if node is None and not points:
                continue
            node = node or self._points(key, name, color)
            was = node.StartModify()
            node.RemoveAllControlPoints()
            for ras in points:
                index = node.AddControlPointWorld(list(ras), "")
                node.SetNthControlPointLocked(index, True)
            node.EndModify(was)
        boxes = [self._node(i) for i in self._box_ids]
        boxes = [b for b in boxes if b is not None]
        while len(boxes) > len(prompts.boxes):
            self._remove_node(boxes.pop())
        for index, (lo, hi) in enumerate(prompts.boxes):
            if index >= len(boxes):
                boxes.append(self._make("vtkMRMLMarkupsROINode", f"{self.prefix} box", BOX_COLOR))
            roi = boxes[index]
            roi.SetCenter([(a + b) / 2 for a, b in zip(lo, hi, strict=False)])
            roi.SetSize([max(b - a, 1e-3) for a, b in zip(lo, hi, strict=False)])
        self._box_ids = [b.GetID() for b in boxes]

    def node_ids(self) -> list[str]:
        return [i for i in (*self._ids.values(), *self._box_ids) if self._node(i) is not None]

    def _remove_node(self, node: Any) -> None:
        """Remove a marker and its display nodes (RemoveNode alone leaves display nodes in the scene)."""
        displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        self.scene.RemoveNode(node)
        for display in displays:
            if display is not None and self.scene.IsNodePresent(display):
                self.scene.RemoveNode(display)

    def remove(self) -> None:
        """Delete every marker node (safe after the scene was closed: missing nodes are skipped)."""
        for node_id in self.node_ids():
            node = self._node(node_id)
            if node is not None:
                self._remove_node(node)
        self._ids.clear()
        self._box_ids.clear()

    def forget(self) -> None:
        """Drop references without touching the scene (it is being cleared anyway)."""
        self._ids.clear()
        self._box_ids.clear()
