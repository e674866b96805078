"""TAGS Segment: the Slicer module that sets up TAGS and registers the "TAGS" Segment Editor effect.

The panel installs dependencies (only when asked), installs TAGS checkpoints, picks the compute device and
shows a status log; the segmenting itself happens in the effect. Both share one TAGS logic, owned by the module
logic `TAGSSegmentLogic` (the panel's `logic`, which the effect finds with `slicer.util.getModuleLogic`); its
settings are kept in Slicer's QSettings. The GUI-free decisions live in the modules of TAGSSegmentLib. torch and
the model code are imported only inside functions that need them, never when Slicer loads this module or builds
the panel.
"""

import importlib.util
import logging
import os
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from TAGSSegmentLib import install, settings, status_log, wording
from TAGSSegmentLib.module_logic import ModuleLogic

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4

    def _(text):
        return text

    def translate(context, text):
        return text


TORCH_REQUIREMENT = ">=2.1"  # same floor as pyproject.toml; never pin an old torch


#
# Module
#


class TAGSSegment(ScriptedLoadableModule):
    """Module description, citation and licences; registers the TAGS effect once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TAGS Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["TAGSSegment developers"]
        self.parent.helpText = _("""
Interactive 3D tumour segmentation from clicks, boxes and a free-text description.
Set up dependencies, models and the compute device here, then segment with the <b>TAGS</b> effect of the
Segment Editor: type a description (e.g. "pancreatic tumor"), click the target in a slice view, Ctrl+click to
exclude, drag a box. See <a href="https://github.com/tagsegment/TAGSSegment/blob/main/docs/SLICER.md">the
user guide</a>.
""")
        self.parent.acknowledgementText = _("""
Based on TAGS: "3D Tumor-Adaptive Guidance for SAM", Li et al., ICCV 2025 workshops (arXiv:2505.17096);
please cite it when you use this module.
Weights: the default model uses the LiteMedSAM weights (bowang-lab/MedSAM, Apache-2.0); TAGS models build on
Segment Anything (Meta, Apache-2.0) and CLIP (OpenAI, MIT). TAGS checkpoints you install keep their own
licences. The module itself is Apache-2.0.
""")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        """Register the scripted effect with the Segment Editor (template pattern). The saved device and engine
        choice are read by the module logic when it builds the TAGS logic."""
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        effectPath = os.path.join(os.path.dirname(__file__), "TAGSSegmentLib", "SegmentEditorEffect.py")
        instance.setPythonSource(effectPath.replace("\\", "/"))
        instance.self().register()


#
# Widget
#


class TAGSSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Setup panel: dependencies, models, device, self-test and the status log."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        # the module logic: `slicer.util.getModuleLogic("TAGSSegment")` returns this attribute (the effect uses it)
        self.logic = TAGSSegmentLogic()
        self._deviceInfo = None  # filled by describe_devices() once torch is loaded on request

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TAGSSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        allowMps = slicer.util.settingsValue(settings.ALLOW_MPS_KEY, False, converter=slicer.util.toBool)
        self.ui.allowMpsCheckBox.checked = allowMps
        self._fillDeviceComboBox(self.logic.device())

        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        self.ui.refreshButton.connect("clicked()", self.onRefresh)
        self.ui.installCheckpointFileButton.connect("clicked()", self.onInstallCheckpointFromFile)
        self.ui.installCheckpointUrlButton.connect("clicked()", self.onInstallCheckpointFromUrl)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.allowMpsCheckBox.connect("toggled(bool)", self.onAllowMpsToggled)
        self.ui.openSegmentEditorButton.connect("clicked()", self.onOpenSegmentEditor)
        self.ui.runSelfTestButton.connect("clicked()", self.onRunSelfTest)
        self.ui.clearLogButton.connect("clicked()", self.ui.statusLog.clear)
        self._setupEngineSection()

        for line in status_log.log_history():
            self.ui.statusLog.appendPlainText(line)
        status_log.add_log_listener(self._appendLog)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self._refreshCheapStatus()

    def cleanup(self):
        """Stop the TAGS logic (engine process or worker thread, GPU memory) and every observer and listener."""
        self.removeObservers()
        status_log.remove_log_listener(self._appendLog)
        self.logic.release_tags_logic()

    def enter(self):
        self._refreshCheapStatus()

    def onSceneStartClose(self, caller, event):
        logic = self.logic.running_tags_logic()
        if logic is not None:
            logic.cancel_pending()

    def _appendLog(self, line):
        self.ui.statusLog.appendPlainText(line)

    def _log(self, text):
        status_log.log_message(text)

    # ---- status ------------------------------------------------------------------------------------------------

    def _refreshCheapStatus(self):
        """Everything that can be known without importing torch (find_spec and package metadata only)."""
        lines = []
        torchVersion = install.installed_version("torch")
        if torchVersion:
            lines.append(f"torch {torchVersion}: installed.")
        elif importlib.util.find_spec("PyTorchUtils") is None:
            lines.append(
                "torch: missing. The PyTorch extension is not installed either; "
                "'Install dependencies' offers to install it."
            )
        else:
            lines.append("torch: missing; 'Install dependencies' installs it with the PyTorch extension.")
        missing = install.missing_requirements(self.resourcePath("requirements.txt"))
        lines.append(
            "Other packages: all installed." if not missing else f"Other packages missing: {', '.join(missing)}."
        )
        self.ui.dependencyStatusLabel.text = "\n".join(lines)
        self.ui.installDependenciesButton.enabled = bool(missing or not torchVersion)
        self.ui.defaultModelLabel.text = install.default_model_status()
        if "torch" in sys.modules:  # already paid for: show the full picture
            try:
                self._refreshDevices()
                self._refreshModels()
            except Exception as exc:  # opening the panel must never fail
                logging.exception("TAGS Segment: status refresh failed")
                self._log(f"Status refresh failed: {exc}")
        else:
            self.ui.installedModelsListWidget.clear()
            self.ui.installedModelsListWidget.addItem("Press 'Check devices and models' to list installed checkpoints.")
            self._updateDeviceWarning()

    def onRefresh(self):
        with slicer.util.tryWithErrorDisplay(_("Checking devices and models failed."), waitCursor=True):
            self._refreshCheapStatus()
            if install.installed_version("torch"):
                self._refreshDevices()
                self._refreshModels()

    def _refreshDevices(self):
        from tagseg.devices import describe_devices

        self._deviceInfo = describe_devices()
        self._updateDeviceWarning()

    def _updateDeviceWarning(self):
        device = self.logic.device()
        if self._deviceInfo is None:
            self.ui.deviceInfoLabel.text = "GPU details appear after 'Check devices and models'."
            warning = "CPU selected: each prediction takes seconds." if device == "cpu" else ""
        else:
            self.ui.deviceInfoLabel.text, warning = wording.describe_device_info(self._deviceInfo, device)
        self.ui.deviceWarningLabel.text = warning
        self.ui.deviceWarningLabel.visible = bool(warning)

    def _refreshModels(self):
        from tagseg import weights
        from tagseg.paths import cache_dir
        from tagseg.tags.checkpoint import installed_checkpoints, models_dir

        self.ui.installedModelsListWidget.clear()
        entries = installed_checkpoints()
        for entry in reversed(entries):  # newest first: "auto" uses the newest for an anatomy
            self.ui.installedModelsListWidget.addItem(
                f"{entry.get('anatomy', '?')}: {entry.get('task', '?')} ({entry.get('preset', '?')}), "
                f"{entry.get('file', '?')}"
            )
        if not entries:
            self.ui.installedModelsListWidget.addItem("No TAGS checkpoints installed: the default model is used.")
        lines = []
        for name in sorted(weights.CATALOGUE):
            info = weights.describe(name)
            lines.append(
                f"{name} ({info['licence']}): {'present' if info['present'] else 'not downloaded'} — {info['purpose']}"
            )
        self.ui.weightsStatusLabel.text = "\n".join(lines)
        self.ui.dataFolderLabel.text = f"Checkpoints: {models_dir()}\nCache: {cache_dir()}"

    # ---- dependencies ------------------------------------------------------------------------------------------

    def onInstallDependencies(self):
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            if self._ensureTorch() and self._ensurePackages():
                self._log("Dependencies are installed.")
            self._refreshCheapStatus()

    def _ensureTorch(self):
        """torch through the PyTorch extension, which picks the CUDA or CPU build matching this computer."""
        if install.installed_version("torch"):
            return True
        if importlib.util.find_spec("PyTorchUtils") is None:
            if not slicer.util.confirmOkCancelDisplay(
                "TAGS needs the PyTorch extension, which installs the right torch for this computer.\n"
                "Install it now? Slicer must be restarted afterwards; then press 'Install dependencies' again.",
                windowTitle="TAGS Segment",
            ):
                self._log("The PyTorch extension was not installed.")
                return False
            # this was the question: the extensions manager must not ask twice more
            if not install.install_extension_quietly(slicer.app.extensionsManagerModel(), "PyTorch"):
                raise RuntimeError(
                    "The PyTorch extension could not be installed: install it from the "
                    "Extensions Manager, restart Slicer and try again."
                )
            self._log("PyTorch extension installed; restart Slicer, then press 'Install dependencies' again.")
            return False
        import PyTorchUtils

        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            self._log("Installing torch with the PyTorch extension (this downloads up to a few GB)…")
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                self._log("torch was not installed.")
                return False
        return True

    def _ensurePackages(self):
        """The engine's other packages from Resources/requirements.txt (torch is already there, so nothing
        replaces it), after one question. False when the user declined."""
        try:
            import slicer.packaging as packaging
        except ImportError:  # Slicer < 5.12
            packaging = None

        def confirm(missing):
            return slicer.util.confirmOkCancelDisplay(
                "TAGS Segment needs these Python packages:\n\n" + "\n".join(missing) + "\n\nInstall them now? "
                "This modifies Slicer's Python environment.",
                windowTitle="TAGS Segment",
            )

        if install.ensure_packages(
            self.resourcePath("requirements.txt"), confirm, packaging, getattr(slicer.util, "pip_install", None)
        ):
            return True
        self._log("The Python packages were not installed.")
        return False

    # ---- models ------------------------------------------------------------------------------------------------

    def onInstallCheckpointFromFile(self):
        path = qt.QFileDialog.getOpenFileName(
            self.parent, "Install TAGS checkpoint", "", "TAGS checkpoints (*.safetensors);;All files (*)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Installing the checkpoint failed."), waitCursor=True):
            self._installCheckpoint(path)

    def onInstallCheckpointFromUrl(self):
        with slicer.util.tryWithErrorDisplay(_("Downloading the checkpoint failed."), waitCursor=True):
            url = self.ui.checkpointUrlLineEdit.text.strip()
            sha256 = install.normalise_sha256(self.ui.checkpointSha256LineEdit.text)
            fileName = install.download_file_name(url, sha256)
            from tagseg.paths import sha256_file
            from tagseg.weights import offline_mode

            if offline_mode():
                raise RuntimeError(
                    "Offline mode is set (HF_HUB_OFFLINE or TAGSEG_OFFLINE): download the file "
                    "elsewhere and use 'Install TAGS checkpoint from file…'."
                )
            if not slicer.util.confirmOkCancelDisplay(
                f"Download {url}?\n\nThe file is checked against SHA-256 {sha256} and then copied to the TAGS "
                "models folder. Check the checkpoint's licence before using it.",
                windowTitle="TAGS Segment",
            ):
                return
            import SampleData

            self._log(f"Downloading {url}…")
            path = SampleData.SampleDataLogic().downloadFileIntoCache(url, fileName, f"SHA256:{sha256}")
            if not path or not os.path.isfile(path) or sha256_file(path) != sha256:
                raise RuntimeError(f"The download of {url} failed or does not match SHA-256 {sha256}.")
            self._installCheckpoint(path)

    def _installCheckpoint(self, path):
        from tagseg.tags.checkpoint import install_checkpoint

        installed = install_checkpoint(path)
        self.logic.release_tags_logic()  # the next prediction resolves model="auto" again and finds it
        self._log(f"Installed TAGS checkpoint {installed}")
        self._refreshModels()

    # ---- engine ------------------------------------------------------------------------------------------------

    def _setupEngineSection(self):
        """Where the model runs: a local `tagseg serve` child process (default), a remote engine server (URL and
        token, e.g. a GPU machine), or Slicer's own process (fallback). Built here rather than in the .ui file."""
        import ctk

        section = ctk.ctkCollapsibleButton()
        section.text = _("Engine")
        section.collapsed = True
        form = qt.QFormLayout(section)
        self.engineModeComboBox = qt.QComboBox()
        for label, value in settings.ENGINE_MODES:
            self.engineModeComboBox.addItem(label, value)
        self.engineUrlEdit = qt.QLineEdit()
        self.engineUrlEdit.setPlaceholderText("http://127.0.0.1:8765")
        self.engineUrlEdit.toolTip = _(
            "The 'url' that `tagseg serve` prints; reach a remote GPU server through "
            "`ssh -L 8765:127.0.0.1:8765 gpu-host` and enter http://127.0.0.1:8765."
        )
        self.engineTokenEdit = qt.QLineEdit()
        self.engineTokenEdit.setEchoMode(qt.QLineEdit.Password)
        self.engineTokenEdit.toolTip = _("The first line of the server's --token-file (saved in Slicer's settings).")
        buttons = qt.QHBoxLayout()
        self.engineApplyButton = qt.QPushButton(_("Apply"))
        self.engineTestButton = qt.QPushButton(_("Test connection"))
        buttons.addWidget(self.engineApplyButton)
        buttons.addWidget(self.engineTestButton)
        self.engineStatusLabel = qt.QLabel()
        self.engineStatusLabel.wordWrap = True
        form.addRow(_("Run the model:"), self.engineModeComboBox)
        form.addRow(_("Server URL:"), self.engineUrlEdit)
        form.addRow(_("Token:"), self.engineTokenEdit)
        form.addRow(buttons)
        form.addRow(self.engineStatusLabel)
        self.layout.insertWidget(max(self.layout.count() - 1, 0), section)
        mode, url, token = self.logic.saved_engine()
        index = self.engineModeComboBox.findData(mode)
        self.engineModeComboBox.setCurrentIndex(index if index >= 0 else 0)
        self.engineUrlEdit.text, self.engineTokenEdit.text = url, token
        self.engineModeComboBox.connect("currentIndexChanged(int)", self._updateEngineWidgets)
        self.engineApplyButton.connect("clicked()", self.onApplyEngine)
        self.engineTestButton.connect("clicked()", self.onTestEngine)
        self._updateEngineWidgets()

    def _updateEngineWidgets(self, *args):
        remote = self.engineModeComboBox.currentData == "remote"
        self.engineUrlEdit.enabled = self.engineTokenEdit.enabled = remote
        logic = self.logic.running_tags_logic()
        running = getattr(logic, "engine_url", None) if logic is not None else None
        pid = getattr(logic, "engine_pid", None) if logic is not None else None
        mode = self.logic.engine_settings()["mode"]
        if mode == "in-process":
            text = _("The model runs inside Slicer (fallback): Slicer may respond slowly while it runs.")
        elif running:
            text = _("Engine at {url}{pid}.").format(url=running, pid=f" (process {pid})" if pid else "")
        else:
            text = _("The engine starts with the first prediction.")
        self.engineStatusLabel.text = text

    def onApplyEngine(self):
        mode = self.engineModeComboBox.currentData
        url, token = self.engineUrlEdit.text.strip(), self.engineTokenEdit.text.strip()
        try:
            changed = self.logic.set_engine(mode, url, token)  # saved in Slicer's settings
        except ValueError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="TAGS")
            return
        if changed:
            self._log(
                f"Engine: {self.engineModeComboBox.currentText}"
                + (f" at {self.logic.engine_settings()['url']}" if mode == "remote" else "")
                + "."
            )
        self._updateEngineWidgets()

    def onTestEngine(self):
        """Ask the chosen remote server for /v1/health (at most a few seconds), or report the local engine."""
        if self.engineModeComboBox.currentData != "remote":
            self._updateEngineWidgets()
            return
        with slicer.util.tryWithErrorDisplay(_("The engine server did not answer."), waitCursor=True):
            from tagseg.client import engine_health

            url = settings.normalise_engine_url(self.engineUrlEdit.text)
            health = engine_health(url, self.engineTokenEdit.text.strip() or None, timeout=3.0)
            self.engineStatusLabel.text = _("Connected: tagseg {version} on {device}, {sessions} session(s).").format(
                version=health.get("version", "?"), device=health.get("device", "?"), sessions=health.get("sessions", 0)
            )

    # ---- device ------------------------------------------------------------------------------------------------

    def _fillDeviceComboBox(self, device):
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label, value in settings.device_choices(self.ui.allowMpsCheckBox.checked):
            combo.addItem(label, value)
        index = combo.findData(device)
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(wasBlocked)
        self._applyDevice(combo.itemData(combo.currentIndex))

    def _applyDevice(self, device):
        if self.logic.set_device(device):  # saved in Slicer's settings
            self._log(f"Device changed to {device}; the model will be loaded again on the next prediction.")
        self._updateDeviceWarning()

    def onDeviceChanged(self, index):
        self._applyDevice(self.ui.deviceComboBox.itemData(index))

    def onAllowMpsToggled(self, allowed):
        qt.QSettings().setValue(settings.ALLOW_MPS_KEY, bool(allowed))
        self._fillDeviceComboBox(self.logic.device())

    # ---- actions -----------------------------------------------------------------------------------------------

    def onOpenSegmentEditor(self):
        """Switch to the Segment Editor on the chosen volume with the TAGS effect active, creating a
        segmentation and a segment where there is none (the effect needs a selected segment)."""
        with slicer.util.tryWithErrorDisplay(_("Opening the Segment Editor failed."), waitCursor=True):
            volumeNode = self.ui.inputVolumeSelector.currentNode() or self._displayedVolume()
            if volumeNode is None:
                self._log("Load a volume first (e.g. File > Add Data or Sample Data).")
                return
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            segmentationNode = editor.segmentationNode()
            if segmentationNode is None:
                segmentationNode = self._newSegmentation(volumeNode)
                editor.setSegmentationNode(segmentationNode)
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:
                editor.setMasterVolumeNode(volumeNode)
            if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
                editor.setCurrentSegmentID(segmentationNode.GetSegmentation().AddEmptySegment())
            editor.setActiveEffectByName("TAGS")

    @staticmethod
    def _displayedVolume():
        layoutManager = slicer.app.layoutManager()
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager else None
        if sliceWidget:
            volumeId = sliceWidget.sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID()
            if volumeId:
                return slicer.mrmlScene.GetNodeByID(volumeId)
        return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    @staticmethod
    def _newSegmentation(volumeNode):
        try:
            from TAGSSegmentLib.logic import ensure_segmentation
        except ImportError:  # dependencies not installed yet: a plain segmentation works as well
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TAGS")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            return segmentationNode
        return ensure_segmentation(slicer.mrmlScene, volumeNode, name="TAGS")

    def onRunSelfTest(self):
        with slicer.util.tryWithErrorDisplay(_("The TAGS self-test failed."), waitCursor=True):
            from TAGSSegmentLib.logic import run_selftest

            device = self.logic.device()
            self._log(f"Self-test on {device} started (adds a phantom and a segmentation to the scene)…")
            result = run_selftest(slicer.mrmlScene, device=device, log=self._log)
            timings = wording.format_timings(result.get("timings"))
            self._log(
                f"Self-test passed: Dice {result['dice']:.3f} in {result['seconds']:.1f} s"
                + (f" ({timings})" if timings else "")
            )


#
# Logic
#


class TAGSSegmentLogic(ModuleLogic, ScriptedLoadableModuleLogic):
    """The module logic: owns the TAGS logic (engine client) that the panel and the effect share, built on first
    use from the device and engine choice saved in Slicer's settings (TAGSSegmentLib.module_logic has the
    details). The panel creates it as its `logic`, which is what `slicer.util.getModuleLogic("TAGSSegment")`
    returns for a scripted module."""

    def __init__(self, settingsStore=None):
        ScriptedLoadableModuleLogic.__init__(self)
        ModuleLogic.__init__(self, settingsStore or settings.QSettingsStore())
        # the engine process and GPU memory go with Slicer even when the panel was never cleaned up
        slicer.app.connect("aboutToQuit()", self.release_tags_logic)

    def tagsLogic(self):
        """The TAGS logic (TAGSLogic or InProcessTAGSLogic), built on first use."""
        return self.tags_logic()


#
# Test
#


class TAGSSegmentTest(ScriptedLoadableModuleTest):
    """Runs in a real Slicer (ctest, Developer > Self Tests, or `Slicer --testing`)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TAGSSegment_effect_registered()
        self.setUp()
        self.test_TAGSSegment_effect_writes_with_undo()
        self.setUp()
        self.test_TAGSSegment_selftest()

    def test_TAGSSegment_effect_registered(self):
        """The module registered the TAGS effect with the Segment Editor at startup."""
        factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        names = [effect.name for effect in factory.registeredEffects()]
        self.assertIn("TAGS", names)

    def test_TAGSSegment_effect_writes_with_undo(self):
        """A prompt through the effect writes the (fake) model's mask into the selected segment; one undo
        restores the empty segment. The fake needs no torch and no weights."""
        import concurrent.futures
        import time

        import numpy as np

        volumeNode = slicer.util.addVolumeFromArray(np.zeros((20, 40, 40), np.int16), name="TAGS test volume")
        volumeNode.SetSpacing(1.0, 1.0, 2.0)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment()

        class FakeLogic:
            last_timings = {"fake": 0.0}

            def predict_async(self, volume_node, include_ras, exclude_ras, boxes_ras, text, anatomy=None):
                rasToIjk = vtk.vtkMatrix4x4()
                volume_node.GetRASToIJKMatrix(rasToIjk)
                i, j, k, _ = rasToIjk.MultiplyPoint([*include_ras[0], 1.0])
                mask = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, np.uint8)
                k, j, i = (int(round(v)) for v in (k, j, i))
                mask[max(k - 2, 0) : k + 3, max(j - 4, 0) : j + 5, max(i - 4, 0) : i + 5] = 1
                future = concurrent.futures.Future()
                future.set_result(mask)
                return future

            def cancel_pending(self):
                pass

            def shutdown(self):
                pass

        moduleLogic = slicer.util.getModuleLogic("TAGSSegment")
        previous = moduleLogic.replace_tags_logic(FakeLogic())
        editor = slicer.qMRMLSegmentEditorWidget()
        try:
            editor.setMRMLScene(slicer.mrmlScene)
            editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
            editor.setMaximumNumberOfUndoStates(10)
            editor.setSegmentationNode(segmentationNode)
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:
                editor.setMasterVolumeNode(volumeNode)
            editor.setCurrentSegmentID(segmentId)
            editor.setActiveEffectByName("TAGS")
            effect = editor.activeEffect()
            self.assertIsNotNone(effect, "the TAGS effect could not be activated")
            tags = effect.self()
            tags.descriptionEdit.text = "liver tumor"
            bounds = [0.0] * 6
            volumeNode.GetRASBounds(bounds)
            center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
            tags.addPrompt(ras=center, include=True)
            for _ in range(200):
                if not tags.queue.busy:
                    break
                slicer.app.processEvents()
                time.sleep(0.01)
            tags._poll()
            written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            self.assertGreater(int(written.sum()), 0, "the effect did not write the mask")
            self.assertEqual(len(tags.markers.node_ids()), 1, "the include point marker is missing")
            editor.undo()
            undone = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            self.assertEqual(int(undone.sum()) if undone is not None else 0, 0, "undo did not restore the segment")
            editor.setActiveEffect(None)
            self.assertEqual(tags.markers.node_ids(), [], "prompt markers survived deactivation")
        finally:
            moduleLogic.replace_tags_logic(previous)
            editor.setActiveEffect(None)

    def test_TAGSSegment_selftest(self):
        """The logic's own self-test (synthetic volume, real model on the CPU). Needs torch and the packages
        from Resources/requirements.txt; where they are missing it says so and returns: runTest calls the tests
        directly (Self Tests, Reload and Test), where a skipTest would be reported as an error."""
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay(
                "TAGS self-test not run: torch is not installed "
                "(press 'Install dependencies' in the TAGS Segment module)"
            )
            return
        from TAGSSegmentLib.logic import SELFTEST_MIN_DICE, run_selftest

        self.delayDisplay("Running the TAGS self-test on the CPU")
        result = run_selftest(slicer.mrmlScene, device="cpu", log=logging.info)  # raises AssertionError on failure
        self.assertIsInstance(result, dict)
        self.assertGreaterEqual(result["dice"], SELFTEST_MIN_DICE)
        if result["editor_checked"]:
            for key in ("undo_ok", "redo_ok", "others_unchanged"):
                self.assertIs(result[key], True, f"self-test reports {key}={result[key]!r}")
        else:
            self.delayDisplay(
                "Segment Editor write/undo checks skipped: this Slicer has no "
                "vtkSlicerSegmentEditorLogic (Slicer 5.10 and later have it)"
            )
        segmentationNode = slicer.mrmlScene.GetNodeByID(result["segmentation_id"])
        self.assertIsNotNone(segmentationNode.GetSegmentation().GetSegment(result["tumor_segment_id"]))
        self.delayDisplay(f"TAGS self-test passed: Dice {result['dice']:.3f} in {result['seconds']:.1f} s")
