"""The "TAGS" Segment Editor effect: clicks, boxes and a typed description become a 3D segment.

A thin Qt layer: prompt bookkeeping (`prompts`), the one-in-flight prediction queue (`prediction_queue`), box
geometry (`slice_boxes`), wording (`wording`), segment naming (`naming`) and the prompt markers (`markers`) live in
GUI-free modules of TAGSSegmentLib (tested in CI). The model runs in the TAGS logic that the TAGS Segment module
logic owns (found with `slicer.util.getModuleLogic`), in its engine process (`tagseg serve`), whose exchange this
effect's QTimer drives without blocking
(PythonQt holds the GIL while the event loop runs, so no Python thread is relied on). Writes go through the
effect API so undo, masking and overwrite settings of the Segment Editor apply. torch and the model code are
imported only when a prediction is made (and then in the engine process).
"""

import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
if __name__ == os.path.basename(_PACKAGE_DIR) and "__path__" not in globals():
    # Slicer executed this file itself under the package's name (its fallback when the package did not expose
    # the class, see TAGSSegmentLib/__init__.py). Since 5.10 this module then replaces the package in
    # sys.modules; 5.8 fills an empty module of that name. Either way it must stay a package, or no
    # `TAGSSegmentLib.<submodule>` could be imported for the rest of the session.
    __path__ = [_PACKAGE_DIR]

import logging

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from TAGSSegmentLib import markers, naming, prediction_queue, prompts, slice_boxes, status_log, wording

POLL_INTERVAL_MS = 20  # how often the main thread advances the engine exchange (each tick <= ~30 ms)
PROGRESS_DIALOG_DELAY_S = 2.0  # a quick prediction never flashes a dialog


def _moduleLogic():
    """The TAGS Segment module logic (`TAGSSegmentLogic`), owner of the TAGS logic that the module panel and every
    Segment Editor share. For a scripted module Slicer returns the panel's `logic`, building the panel (hidden)
    the first time; the TAGS logic itself is built on first use, so opening the Segment Editor never loads torch."""
    return slicer.util.getModuleLogic("TAGSSegment")


def _runningTagsLogic():
    """The TAGS logic if one was built, else None; never builds anything (also while Slicer is closing)."""
    try:
        return _moduleLogic().running_tags_logic()
    except Exception:  # the module is being unloaded
        return None


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Promptable 3D segmentation of the selected segment with TAGS."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "TAGS"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.prompts = prompts.Prompts()
        self.markers = None
        self.queue = prediction_queue.PredictionQueue(self._startPrediction)
        self._promptContext = None  # (segmentation ID, segment ID, volume ID) the prompts belong to
        self._press = None  # left-button press being tracked: view key, xy, exclude flag
        self._dragging = False
        self._rubberBands = {}  # slice node ID -> (view widget, vtkPoints, vtkPolyData, vtkActor2D)
        self._progressDialog = None
        self._cursorOverridden = False
        self._sceneObservations = []
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self._poll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return """<html>Segment the selected segment in 3D with TAGS, from clicks, boxes and a description.
<p><b>Slice views only</b> (the 3D view is ignored):
<ul>
<li><b>Left click</b>: include point (green) — "the target is here".</li>
<li><b>Ctrl+click</b> or <b>Shift+click</b>: exclude point (red) — "not this". The <i>Exclude</i> toggle does
the same for plain clicks.</li>
<li><b>Left drag</b>: box around the target on this slice (yellow); it reaches half its width above and
below the slice.</li>
<li><b>Enter</b> in the description field: run again with the new description.</li>
<li><b>Ctrl+Z</b> / <b>Ctrl+Y</b>: Segment Editor undo / redo of the last result (prompts stay; use
<i>Clear prompts</i> to start over).</li>
</ul>
The description (e.g. "pancreatic tumor") names the segment and guides the model; an optional anatomy
segment (e.g. the organ) restricts where it looks. <i>Next segment</i> starts a new segment named after the
description. Device and models are set in the <b>TAGS Segment</b> module.</html>"""

    # ------------------------------------------------------------------------------------------------------------
    # options panel

    def setupOptionsFrame(self):
        self.descriptionEdit = qt.QLineEdit()
        self.descriptionEdit.setPlaceholderText("pancreatic tumor")
        self.descriptionEdit.setToolTip("What to segment, in words. Press Enter to run again with a new description.")
        self.scriptedEffect.addLabeledOptionsWidget("Description:", self.descriptionEdit)

        self.anatomyComboBox = qt.QComboBox()
        self.anatomyComboBox.setToolTip("Optional: another segment (e.g. the organ) that contains the target.")
        self.scriptedEffect.addLabeledOptionsWidget("Anatomy:", self.anatomyComboBox)

        self.includeButton = qt.QPushButton("Include")
        self.includeButton.setToolTip("Plain clicks add include points (Ctrl/Shift+click always excludes).")
        self.excludeButton = qt.QPushButton("Exclude")
        self.excludeButton.setToolTip("Plain clicks add exclude points.")
        self.polarityGroup = qt.QButtonGroup()
        for button in (self.includeButton, self.excludeButton):
            button.setCheckable(True)
            self.polarityGroup.addButton(button)
        self.includeButton.setChecked(True)
        polarityLayout = qt.QHBoxLayout()
        polarityLayout.addWidget(self.includeButton)
        polarityLayout.addWidget(self.excludeButton)
        self.scriptedEffect.addLabeledOptionsWidget("Clicks:", polarityLayout)

        self.clearPromptsButton = qt.QPushButton("Clear prompts")
        self.clearPromptsButton.setToolTip("Remove all points and boxes (the segment is kept).")
        self.nextSegmentButton = qt.QPushButton("Next segment")
        self.nextSegmentButton.setToolTip("Add a new segment named after the description, select it and clear prompts.")
        actionsLayout = qt.QHBoxLayout()
        actionsLayout.addWidget(self.clearPromptsButton)
        actionsLayout.addWidget(self.nextSegmentButton)
        self.scriptedEffect.addOptionsWidget(actionsLayout)

        self.statusLabel = qt.QLabel()
        self.statusLabel.setWordWrap(True)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        for widget, signal, slot in self._optionsConnections():
            widget.connect(signal, slot)

    def _optionsConnections(self):
        """(widget, signal, slot) of the options widgets: connected in setupOptionsFrame, disconnected in cleanup."""
        return (
            (self.descriptionEdit, "returnPressed()", self.onDescriptionEntered),
            (self.descriptionEdit, "editingFinished()", self.updateMRMLFromGUI),
            (self.anatomyComboBox, "currentIndexChanged(int)", self.onAnatomyChanged),
            (self.includeButton, "toggled(bool)", self.updateMRMLFromGUI),
            (self.clearPromptsButton, "clicked()", self.onClearPrompts),
            (self.nextSegmentButton, "clicked()", self.onNextSegment),
        )

    def cleanup(self):
        """Break the Qt connections and observers that would keep this object alive (Slicer issue 7392)."""
        self._cancelPrediction(None)
        self._removeSceneObservers()
        self.pollTimer.disconnect("timeout()", self._poll)
        if hasattr(self, "descriptionEdit"):
            for widget, signal, slot in self._optionsConnections():
                widget.disconnect(signal, slot)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Description", "")
        self.scriptedEffect.setParameterDefault("AnatomySegmentID", "")
        self.scriptedEffect.setParameterDefault("ExcludeClicks", 0)

    def updateGUIFromMRML(self):
        if not hasattr(self, "descriptionEdit"):
            return
        if not self.descriptionEdit.hasFocus():  # never overwrite what the user is typing
            wasBlocked = self.descriptionEdit.blockSignals(True)
            self.descriptionEdit.text = self.scriptedEffect.parameter("Description")
            self.descriptionEdit.blockSignals(wasBlocked)
        exclude = self.scriptedEffect.integerParameter("ExcludeClicks") != 0
        for button, checked in ((self.includeButton, not exclude), (self.excludeButton, exclude)):
            wasBlocked = button.blockSignals(True)
            button.setChecked(checked)
            button.blockSignals(wasBlocked)
        self._refreshAnatomyComboBox()
        if self.scriptedEffect.active():
            self._checkPromptContext()

    def updateMRMLFromGUI(self):
        if not hasattr(self, "descriptionEdit"):
            return
        self.scriptedEffect.setParameter("Description", self.descriptionEdit.text.strip())
        self.scriptedEffect.setParameter("ExcludeClicks", 1 if self.excludeButton.checked else 0)
        index = self.anatomyComboBox.currentIndex
        segmentId = self.anatomyComboBox.itemData(index) if index >= 0 else ""
        self.scriptedEffect.setParameter("AnatomySegmentID", segmentId or "")

    def _refreshAnatomyComboBox(self):
        """Other segments of the segmentation, so an organ segment can guide the model."""
        segmentationNode, selectedId, _ = self._nodes()
        wanted = self.scriptedEffect.parameter("AnatomySegmentID")
        wasBlocked = self.anatomyComboBox.blockSignals(True)
        self.anatomyComboBox.clear()
        self.anatomyComboBox.addItem("(none)", "")
        if segmentationNode:
            segmentation = segmentationNode.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(index)
                if segmentId != selectedId:
                    self.anatomyComboBox.addItem(segmentation.GetSegment(segmentId).GetName(), segmentId)
        found = self.anatomyComboBox.findData(wanted) if wanted else 0
        self.anatomyComboBox.setCurrentIndex(max(found, 0))
        self.anatomyComboBox.blockSignals(wasBlocked)

    # ------------------------------------------------------------------------------------------------------------
    # life cycle

    def activate(self):
        self.markers = markers.PromptMarkers(slicer.mrmlScene)
        self._removeSceneObservers()
        self._sceneObservations = [
            slicer.mrmlScene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneStartClose)
        ]
        self._refreshAnatomyComboBox()
        self._setStatus(
            "Type a description, then click the target in a slice view (Ctrl+click excludes, drag = box).", log=False
        )
        qt.QTimer.singleShot(0, self._warmUp)

    @staticmethod
    def _warmUp():
        """Start the engine process now (it takes a few seconds), so the first click does not wait for it."""
        try:
            warmUp = getattr(_moduleLogic().tags_logic(), "warm_up", None)
            if callable(warmUp):
                warmUp()
        except Exception:  # missing dependencies are reported by the first click, with instructions
            logging.debug("TAGS: engine warm-up failed", exc_info=True)

    def deactivate(self):
        self._cancelPrediction(None)
        self._press, self._dragging = None, False
        self._removeRubberBands()
        self._clearPrompts()
        self._removeSceneObservers()

    def sourceVolumeNodeChanged(self):
        self._checkPromptContext()

    def masterVolumeNodeChanged(self):  # Slicer < 5.2 name of the same notification
        self._checkPromptContext()

    def _removeSceneObservers(self):
        for tag in self._sceneObservations:
            slicer.mrmlScene.RemoveObserver(tag)
        self._sceneObservations = []

    def _onSceneStartClose(self, caller=None, event=None):
        """The volume and segmentation are about to vanish: stop waiting for the model, drop its result."""
        if self.markers:
            self.markers.forget()  # the scene removes the nodes itself
        self.prompts.clear()
        self._promptContext = None
        self._cancelPrediction("The scene was closed; the running prediction was discarded.")

    # ------------------------------------------------------------------------------------------------------------
    # mouse interaction

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            if eventId == vtk.vtkCommand.LeftButtonPressEvent:
                self._setStatus("TAGS prompts are placed in slice views; clicks in the 3D view are ignored.", log=False)
            return False

        # A quick second click arrives as a double click (press, release, double click, release). Take it as a
        # press, as the Draw effect does: unanswered, Slicer maximizes the view and the click is lost.
        if eventId in (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.LeftButtonDoubleClickEvent):
            exclude = bool(
                callerInteractor.GetControlKey() or callerInteractor.GetShiftKey() or self.excludeButton.checked
            )
            self._press = (self._viewKey(viewWidget), tuple(callerInteractor.GetEventPosition()), exclude)
            self._dragging = False
            return True

        if self._press is None or self._press[0] != self._viewKey(viewWidget):
            return False
        xy = tuple(callerInteractor.GetEventPosition())
        pressXy = self._press[1]

        if eventId == vtk.vtkCommand.MouseMoveEvent:
            if self._dragging or slice_boxes.is_drag(pressXy, xy):
                self._dragging = True
                self._updateRubberBand(viewWidget, pressXy, xy)
                return True
            return False

        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            exclude, dragged = self._press[2], self._dragging or slice_boxes.is_drag(pressXy, xy)
            self._press, self._dragging = None, False
            self._removeRubberBands()
            if dragged:
                self._addBoxFromDrag(viewWidget, pressXy, xy)
            else:
                self._addPointFromClick(viewWidget, pressXy, exclude)
            return True
        return False

    @staticmethod
    def _viewKey(viewWidget):
        return viewWidget.sliceLogic().GetSliceNode().GetID()

    def _clickIsInsideVolume(self, viewWidget, xy):
        image = self.scriptedEffect.sourceVolumeImageData()
        if image is None:
            return False
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        transform = segmentationNode.GetParentTransformNode() if segmentationNode else None
        ijk = self.xyToIjk(xy, viewWidget, image, transform)
        return slice_boxes.inside_extent(ijk, image.GetExtent())

    def _addPointFromClick(self, viewWidget, xy, exclude):
        if not self._readyForPrompts():
            return
        if not self._clickIsInsideVolume(viewWidget, xy):
            self._setStatus("That click is outside the volume; click inside the image.")
            return
        self.addPrompt(ras=self.xyToRas(xy, viewWidget), include=not exclude)

    def _addBoxFromDrag(self, viewWidget, pressXy, releaseXy):
        """The dragged rectangle, extended across the slice by half its longer side (lesions are compact and
        the engine never segments beyond a box's depth; see slice_boxes.drag_box_half_depth)."""
        if not self._readyForPrompts():
            return
        corners = [self.xyToRas(c, viewWidget) for c in slice_boxes.rectangle_corners_xy(pressXy, releaseXy)]
        sliceToRas = viewWidget.sliceLogic().GetSliceNode().GetSliceToRAS()
        normal = [sliceToRas.GetElement(row, 2) for row in range(3)]
        halfDepth = slice_boxes.drag_box_half_depth(corners, self.scriptedEffect.sliceSpacing(viewWidget))
        lo, hi = slice_boxes.slice_box(corners, normal, halfDepth)
        if not (self._clickIsInsideVolume(viewWidget, pressXy) or self._clickIsInsideVolume(viewWidget, releaseXy)):
            self._setStatus("That box starts and ends outside the volume; drag across the target.")
            return
        self.addPrompt(box=(lo, hi))

    def _updateRubberBand(self, viewWidget, a, b):
        key = self._viewKey(viewWidget)
        if key not in self._rubberBands:
            points = vtk.vtkPoints()
            points.SetNumberOfPoints(4)
            lines = vtk.vtkCellArray()
            lines.InsertNextCell(5)
            for index in (0, 1, 2, 3, 0):
                lines.InsertCellPoint(index)
            polyData = vtk.vtkPolyData()
            polyData.SetPoints(points)
            polyData.SetLines(lines)
            mapper = vtk.vtkPolyDataMapper2D()
            mapper.SetInputData(polyData)
            actor = vtk.vtkActor2D()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(*markers.BOX_COLOR)
            actor.GetProperty().SetLineWidth(2)
            self.scriptedEffect.addActor2D(viewWidget, actor)
            self._rubberBands[key] = (viewWidget, points, polyData, actor)
        _, points, polyData, _ = self._rubberBands[key]
        for index, (x, y) in enumerate(slice_boxes.rectangle_corners_xy(a, b)):
            points.SetPoint(index, x, y, 0.0)
        points.Modified()
        polyData.Modified()
        self.scriptedEffect.scheduleRender(viewWidget)

    def _removeRubberBands(self):
        for viewWidget, _, _, actor in self._rubberBands.values():
            self.scriptedEffect.removeActor2D(viewWidget, actor)
            self.scriptedEffect.scheduleRender(viewWidget)
        self._rubberBands = {}

    # ------------------------------------------------------------------------------------------------------------
    # prompts and predictions

    def _nodes(self):
        """(segmentation node, selected segment ID, source volume node) of the Segment Editor."""
        editorNode = self.scriptedEffect.parameterSetNode()
        if editorNode is None:
            return None, None, None
        getVolume = getattr(editorNode, "GetSourceVolumeNode", None) or editorNode.GetMasterVolumeNode
        return editorNode.GetSegmentationNode(), editorNode.GetSelectedSegmentID(), getVolume()

    def _context(self):
        segmentationNode, segmentId, volumeNode = self._nodes()
        return (
            segmentationNode.GetID() if segmentationNode else None,
            segmentId,
            volumeNode.GetID() if volumeNode else None,
        )

    def _checkPromptContext(self):
        """Prompts belong to one segment of one volume: another selection starts with no prompts."""
        if self._promptContext is not None and self._promptContext != self._context():
            self._cancelPrediction(None)
            self._clearPrompts()
            self._setStatus("Selection changed: prompts cleared.", log=False)

    def _readyForPrompts(self):
        segmentationNode, segmentId, volumeNode = self._nodes()
        if volumeNode is None or segmentationNode is None:
            self._setStatus("Select a segmentation and a source volume first.")
            return False
        if not segmentId:
            self._setStatus("Select (or add) a segment first.")
            return False
        return True

    def addPrompt(self, ras=None, include=True, box=None):
        """Add an include/exclude point (RAS mm) or a box ((lo, hi) RAS mm) and segment again with all prompts.
        Public so that scripts and the module's Slicer test can drive the effect without mouse events."""
        if not self._readyForPrompts():
            return
        if self._promptContext != self._context():
            self.prompts.clear()
        try:
            if ras is not None:
                self.prompts.add_point(ras, include)
            if box is not None:
                self.prompts.add_box(*box)
        except ValueError as exc:
            self._setStatus(str(exc))
            return
        self._promptContext = self._context()
        self._showMarkers()
        self.runPrediction()

    def _showMarkers(self):
        if self.markers is None:
            self.markers = markers.PromptMarkers(slicer.mrmlScene)
        self.markers.show(self.prompts)

    def _clearPrompts(self):
        self.prompts.clear()
        self._promptContext = None
        if self.markers:
            self.markers.remove()

    def onClearPrompts(self):
        self._cancelPrediction(None)
        self._clearPrompts()
        self._setStatus("Prompts cleared; the segment was kept.")

    def onDescriptionEntered(self):
        self.updateMRMLFromGUI()
        if self.prompts.has_spatial_prompt:
            self.runPrediction()
        else:
            self._setStatus("Now click the target in a slice view (or drag a box around it).", log=False)

    def onAnatomyChanged(self, index):
        self.updateMRMLFromGUI()
        if self.prompts.has_spatial_prompt:
            self.runPrediction()

    def runPrediction(self):
        """Queue a prediction with every current prompt; while one runs, only the newest request waits."""
        if not self.prompts.has_spatial_prompt:
            self._setStatus("Exclude points need an include point or a box: click the target itself.")
            return
        segmentationNode, segmentId, volumeNode = self._nodes()
        description = self.descriptionEdit.text.strip() if hasattr(self, "descriptionEdit") else ""
        anatomyId = self.scriptedEffect.parameter("AnatomySegmentID")
        try:
            anatomy = None
            if anatomyId and segmentationNode.GetSegmentation().GetSegment(anatomyId) is not None:
                from TAGSSegmentLib.logic import segment_mask

                anatomy = segment_mask(segmentationNode, anatomyId, volumeNode)
            request = {
                "kwargs": self.prompts.predict_arguments(volumeNode, description, anatomy),
                "segmentationNodeID": segmentationNode.GetID(),
                "segmentID": segmentId,
                "volumeNodeID": volumeNode.GetID(),
                "description": description,
            }
        except Exception as exc:
            self._reportError(exc, sys.exc_info())
            return
        self.queue.submit(request)
        self._setStatus(
            f"Segmenting ({self.prompts.describe()})… {wording.description_status(description)}".strip(), log=False
        )
        if not self._cursorOverridden:
            qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)  # busy, but clicks still queue
            self._cursorOverridden = True
        if not self.pollTimer.isActive():
            self.pollTimer.start()

    @staticmethod
    def _startPrediction(request):
        """Called by the queue on the main thread; the model itself runs in the engine process."""
        return _moduleLogic().tags_logic().predict_async(**request["kwargs"])

    def _poll(self):
        try:
            _moduleLogic().poll_tags_logic()  # sends/reads what the sockets allow, then returns (bounded time)
        except Exception:
            logging.exception("TAGS: engine poll failed")
        outcome = self.queue.poll()
        if self.queue.busy:
            elapsed = self.queue.elapsed
            if self._progressDialog is None and elapsed >= PROGRESS_DIALOG_DELAY_S:
                self._progressDialog = slicer.util.createProgressDialog(
                    windowTitle="TAGS", labelText="TAGS is segmenting…", maximum=0
                )
            if self._progressDialog is not None:
                if self._progressDialog.wasCanceled:
                    self._cancelPrediction("Cancelled; the segment was not changed.")
                    return
                logic = _runningTagsLogic()
                self._progressDialog.setLabelText(
                    wording.progress_label(getattr(logic, "last_progress", None), elapsed)
                )
        else:
            self._endBusy()
        if outcome is not None:
            self._applyOutcome(outcome)

    def _endBusy(self):
        self.pollTimer.stop()
        if self._progressDialog is not None:
            self._progressDialog.close()
            self._progressDialog = None
        if self._cursorOverridden:
            qt.QApplication.restoreOverrideCursor()
            self._cursorOverridden = False

    def _cancelPrediction(self, message):
        wasBusy = self.queue.cancel()
        logic = _runningTagsLogic() if wasBusy else None
        if logic is not None:
            try:
                logic.cancel_pending()
            except Exception:
                logging.exception("TAGS: cancel_pending failed")
        self._endBusy()
        if message and wasBusy:
            self._setStatus(message)

    def _applyOutcome(self, outcome):
        """On the main thread: write one finished result into the selected segment, with one undo state."""
        request = outcome.request
        if outcome.error is not None:
            error = outcome.error
            self._reportError(error, (type(error), error, error.__traceback__))
            return
        logic = _runningTagsLogic()
        info = getattr(logic, "last_info", None)
        if prediction_queue.mask_is_empty(outcome.mask):
            self._setStatus(f"Nothing found for these prompts ({outcome.seconds:.1f} s); the segment was not changed.")
            return
        segmentationNode, segmentId, volumeNode = self._nodes()
        if (
            self._context() != (request["segmentationNodeID"], request["segmentID"], request["volumeNodeID"])
            or segmentationNode.GetSegmentation().GetSegment(segmentId) is None
        ):
            self._setStatus("The selection changed while TAGS was running; that result was discarded.")
            return
        try:
            from TAGSSegmentLib.logic import oriented_labelmap

            labelmap = oriented_labelmap(outcome.mask, volumeNode, segmentationNode)
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet
            )
            renamed = naming.adopt_description(segmentationNode, segmentId, request["description"])
        except Exception as exc:
            self._reportError(exc, sys.exc_info())
            return
        voxels = prediction_queue.mask_voxels(outcome.mask) if hasattr(outcome.mask, "shape") else 0
        timings = wording.format_timings(getattr(logic, "last_timings", None))
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        details = f" ({timings})" if timings else ""
        suffix = " — named after the description." if renamed else "."
        suffix += f" {wording.warnings_status(info)}".rstrip()
        reading = wording.description_status(request["description"])
        self._setStatus(
            f"'{name}' updated: {voxels} voxels in {outcome.seconds:.1f} s{details}{suffix} {reading}".strip()
        )

    def _reportError(self, error, excInfo):
        report = wording.explain_error(error)
        logging.error("TAGS: %s", report.status, exc_info=excInfo if excInfo and excInfo[0] else None)
        self._setStatus(report.status)
        if report.dialog and not slicer.app.testingEnabled():
            slicer.util.errorDisplay(report.status, windowTitle="TAGS")

    def onNextSegment(self):
        """A new segment named after the description (terminology and colour from the logic's table), selected
        and with no prompts, ready for the next target."""
        segmentationNode, _, volumeNode = self._nodes()
        if segmentationNode is None:
            self._setStatus("Select a segmentation first.")
            return
        self._cancelPrediction(None)
        self._clearPrompts()
        description = self.descriptionEdit.text.strip()
        try:
            self.scriptedEffect.saveStateForUndo()
            segmentId = naming.add_segment(segmentationNode, description)  # "Tumor" when empty
        except Exception as exc:
            self._reportError(exc, sys.exc_info())
            return
        self.scriptedEffect.parameterSetNode().SetSelectedSegmentID(segmentId)
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        self._setStatus(f"New segment '{name}' selected: click the next target.")

    def _setStatus(self, text, log=True):
        if hasattr(self, "statusLabel"):
            self.statusLabel.text = text
        if log:
            status_log.log_message(f"TAGS effect: {text}")
