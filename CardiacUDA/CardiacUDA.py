"""CardiacUDA: unsupervised cross-modality domain adaptation of cardiac segmentation, in 3D Slicer.

This file is the thin Qt layer: the panel, its settings, and a timer that reads the worker's events.
Everything else is in ``CardiacUDASlicerLib`` (Qt-free, tested on ``slicer-core``) and in the library
``CardiacUDALib``. Neither torch nor the library is imported at file scope: the module must load, and
its panel open, before PyTorch is installed. (No ``from __future__ import annotations`` either: the
parameter node wrapper reads the annotations of its class as types.)
"""

import logging
from pathlib import Path
from typing import Annotated, Any

import CardiacUDASlicerLib  # noqa: F401  (light; in a source checkout it puts the library on sys.path)
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The oldest Slicer this module runs in (its segments' terminology API and Python 3.10+ syntax). The
# extension's CMakeLists.txt refuses older versions at configure time; this stops a source checkout.
MINIMUM_SLICER_VERSION = (5, 10)
if (slicer.app.majorVersion, slicer.app.minorVersion) < MINIMUM_SLICER_VERSION:
    raise ImportError(
        "CardiacUDA needs Slicer {}.{} or later; this is Slicer {}".format(
            *MINIMUM_SLICER_VERSION, slicer.app.applicationVersion
        )
    )

README_URL = "https://github.com/CardiacUDA/SlicerCardiacUDA#readme"
SETTINGS_PREFIX = "CardiacUDA/"
POLL_INTERVAL_MS = 200


class CardiacUDA(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CardiacUDA")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CardiacUDA developers"]
        self.parent.helpText = _(
            "Adapts a cardiac segmentation network from a labelled source modality (e.g. bSSFP MRI or CT) to "
            "unlabelled target volumes of another modality (e.g. LGE MRI), without any target label, and shows "
            "the adapted segmentations as segments with standard terminology. Training runs in a background "
            "process. See the <a href='{url}'>README</a> for a step-by-step tutorial and the batch mode."
        ).format(url=README_URL)
        self.parent.acknowledgementText = _(
            "CardiacUDA implements, among others: Dou et al., 'Unsupervised Cross-Modality Domain Adaptation of "
            "ConvNets for Biomedical Image Segmentations with Adversarial Loss', IJCAI 2018 (PnP-AdaNet); Wu and "
            "Zhuang, 'Unsupervised Domain Adaptation With Variational Approximation for Cardiac Segmentation', "
            "IEEE TMI 2021 (VarDA); Lu, Zheng and Gupta, 'Unsupervised Domain Adaptation for Cardiac "
            "Segmentation: Towards Structure Mutual Information Maximization', CVPR Workshops 2022 (UDA-VAE++); "
            "Qiao et al., 'Unsupervised Domain Adaptation with Contrastive Margin-Enhanced VAE for "
            "Cross-Modality Cardiac Segmentation' (CMEVAE); Zeng et al., 'Contrastive Translation Learning for "
            "Medical Image Segmentation', ICASSP; Hu, Wang and Shi, 'Contrastive Image Synthesis and "
            "Self-supervised Feature Adaptation for Cross-Modality Biomedical Image Segmentation' (CISFA); Li et "
            "al., 'Revisiting Batch Normalization For Practical Domain Adaptation', 2016 (AdaBN). Please cite the "
            "method you use."
        )
        # At start-up the Terminologies module is there only once start-up has completed; a module loaded
        # later (no such signal) loads it when its panel opens or results are imported (Logic.loadTerminology).
        slicer.app.connect("startupCompleted()", CardiacUDALogic.loadTerminology)


@parameterNodeWrapper
class CardiacUDAParameterNode:
    """The panel's state, saved with the scene. Per-user choices (device, cache) live in QSettings."""

    sourceVolume: vtkMRMLScalarVolumeNode  # the pair that "Add pair" adds to the list below
    sourceSegmentation: vtkMRMLSegmentationNode
    sourceVolumes: list[vtkMRMLScalarVolumeNode]  # the labelled source pairs, by rank
    sourceSegmentations: list[vtkMRMLSegmentationNode]
    targetVolumes: list[vtkMRMLScalarVolumeNode]
    referenceSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    method: str = "source_only"
    preset: str = "paper"
    iterations: Annotated[int, WithinRange(0, 1_000_000)] = 0
    outputSegmentation: vtkMRMLSegmentationNode
    translatedVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode


def settingsValue(key: str, default: str = "") -> str:
    return str(qt.QSettings().value(SETTINGS_PREFIX + key, default))


def setSettingsValue(key: str, value: str) -> None:
    qt.QSettings().setValue(SETTINGS_PREFIX + key, value)


class CardiacUDAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, method, train, pretrained model, outputs."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # CardiacUDALogic
        self._parameterNode: CardiacUDAParameterNode | None = None
        self._parameterNodeGuiTag = None
        self.execution = None  # CardiacUDASlicerLib.execution.RunExecution while a run is going on
        self.executionTargets: list[vtkMRMLScalarVolumeNode] = []
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.onPollWorker)
        self.modelManifest = None  # CardiacUDALib.weights.Manifest, once read
        self.modelChoices = []  # CardiacUDASlicerLib.models.ModelChoice, one per entry of the model menu
        self.download = None  # CardiacUDASlicerLib.models.ModelDownload while a model downloads
        self.downloadTimer = qt.QTimer()
        self.downloadTimer.setInterval(POLL_INTERVAL_MS)
        self.downloadTimer.timeout.connect(self.onPollDownload)

    # ---- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacUDA.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CardiacUDALogic()
        self.logic.loadTerminology()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.fillMethodComboBox()
        self.fillDeviceComboBox()
        self.ui.methodComboBox.currentIndexChanged.connect(self.onMethodChanged)
        self.ui.presetComboBox.currentIndexChanged.connect(self.onPresetChanged)
        self.ui.iterationsSpinBox.valueChanged.connect(self.updateTimeEstimate)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.targetVolumesSelector.checkedNodesChanged.connect(self.onTargetsChanged)
        # By signature: qMRMLNodeComboBox also has currentNodeChanged(bool), as Slicer's own modules connect it.
        self.ui.outputSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.onOutputSegmentationChanged
        )
        self.ui.addSourcePairButton.clicked.connect(self.onAddSourcePair)
        self.ui.removeSourcePairsButton.clicked.connect(self.onRemoveSourcePairs)
        self.ui.addScenePairsButton.clicked.connect(self.onAddScenePairs)
        self.ui.addSourceFolderButton.clicked.connect(self.onAddSourceFolder)
        self.fillModelComboBox()
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelDownloadButton.clicked.connect(self.onDownloadModel)
        self.ui.modelImportButton.clicked.connect(self.onImportModel)
        self.ui.modelCancelButton.clicked.connect(self.onCancelDownload)
        self.ui.checkpointPathLineEdit.currentPath = settingsValue("LastCheckpoint")
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(self.onCheckpointChanged)
        self.ui.trainButton.clicked.connect(self.onTrainButton)
        self.ui.segmentWithModelButton.clicked.connect(lambda: self.onStartRun("segment"))
        self.ui.adaptInstantlyButton.clicked.connect(lambda: self.onStartRun("adabn"))
        self.ui.selfTrainButton.clicked.connect(lambda: self.onStartRun("self_training"))
        self.ui.resumeRunButton.clicked.connect(self.onResumeRun)
        self.ui.loadRunButton.clicked.connect(self.onLoadRun)
        self.ui.openCacheButton.clicked.connect(self.onOpenCache)
        self.ui.clearCacheButton.clicked.connect(self.onClearCache)
        self.ui.compareButton.clicked.connect(self.onCompareResults)
        self.initializeParameterNode()
        self.onCheckpointChanged(self.ui.checkpointPathLineEdit.currentPath)
        self.updateModelButtons()

    def fillMethodComboBox(self) -> None:
        """One item per registered method (its key), described below the combo box; needs PyTorch."""
        self.methodChoices = {}
        try:
            from CardiacUDASlicerLib.catalog import method_choices

            self.methodChoices = {choice.key: choice for choice in method_choices()}
        except ImportError as error:
            logging.info(f"CardiacUDA: methods not listed yet ({error})")
            self.ui.methodDescriptionLabel.text = _(
                "PyTorch is not installed yet: the methods are listed once it is (it is installed when you "
                "start a run, or with the PyTorch Utils module)."
            )
        for key, choice in self.methodChoices.items():
            self.ui.methodComboBox.addItem(key)
            self.ui.methodComboBox.setItemData(
                self.ui.methodComboBox.count - 1, choice.description, qt.Qt.ToolTipRole
            )

    def fillDeviceComboBox(self) -> None:
        """``auto``, CPU and every GPU that this PyTorch can use; the choice is remembered per user."""
        try:
            from CardiacUDASlicerLib.catalog import device_choices

            choices = [(choice.name, choice.label) for choice in device_choices()]
        except ImportError:
            choices = [("auto", _("auto (GPU if available)")), ("cpu", _("CPU"))]
        for name, label in choices:
            self.ui.deviceComboBox.addItem(label, name)
        remembered = self.ui.deviceComboBox.findData(settingsValue("Device", "auto"))
        self.ui.deviceComboBox.currentIndex = max(remembered, 0)

    # ---- parameter node ----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Never leave a worker behind: a closed module or application stops its run."""
        if self.execution is not None and not self.execution.finished:
            self.execution.kill()
        if self.download is not None:
            self.download.kill()
        self.timer.stop()
        self.downloadTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.sourceVolume:
            self._parameterNode.sourceVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: CardiacUDAParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.targetVolumesSelector.blockSignals(True)
            for node in self._parameterNode.targetVolumes:
                self.ui.targetVolumesSelector.setCheckState(node, qt.Qt.Checked)
            self.ui.targetVolumesSelector.blockSignals(False)
            self.showMethodSettings()
            self._checkCanApply()

    def onTargetsChanged(self) -> None:
        """The checkable combo box has no parameter-node connector: copy its checked nodes by hand."""
        if self._parameterNode:
            self._parameterNode.targetVolumes = list(self.ui.targetVolumesSelector.checkedNodes())

    def onOutputSegmentationChanged(self, node: Any) -> None:
        """The button's only slot takes a vtkMRMLSegmentationNode*, so the .ui cannot connect the
        selector's vtkMRMLNode* signal to it (Qt refuses the argument type); PythonQt passes the node."""
        self.ui.show3DButton.setSegmentationNode(node)

    # ---- enabled states and tooltips -----------------------------------------------------------

    def _checkCanApply(self, caller: Any = None, event: Any = None) -> None:
        """Each action is enabled only when its inputs are there; its tooltip says what is missing."""
        from CardiacUDASlicerLib.adaptation import RunMode, missing_inputs

        self.updateSourcePairsTable()
        running = self.execution is not None and not self.execution.finished
        inputs = self.currentInputs()
        weights = self.currentCheckpointPath()
        for button, mode, ready_tip in (
            (self.ui.trainButton, RunMode.TRAIN, _("Train the method, then segment the targets.")),
            (
                self.ui.segmentWithModelButton,
                RunMode.SEGMENT,
                _("Segment the targets with the loaded model."),
            ),
            (
                self.ui.adaptInstantlyButton,
                RunMode.ADAPT,
                _("Re-estimate the model's BatchNorm on the targets (seconds), then segment."),
            ),
            (
                self.ui.selfTrainButton,
                RunMode.REFINE,
                _("Self-train the model on the targets with the labelled sources (minutes), then segment."),
            ),
        ):
            missing = missing_inputs(inputs, mode, weights)
            if running:
                button.enabled = button is self.ui.trainButton
                button.toolTip = _("Stop the run; a training keeps its last checkpoint and can be resumed.")
            else:
                button.enabled = not missing
                button.toolTip = ready_tip if not missing else _("Missing: ") + "; ".join(missing)
        self.updateTimeEstimate()

    def currentInputs(self) -> Any:
        from CardiacUDASlicerLib.adaptation import AdaptationInputs

        node = self._parameterNode
        if node is None:
            return AdaptationInputs()
        targets = list(node.targetVolumes)
        references = (
            {targets[0].GetID(): node.referenceSegmentation} if targets and node.referenceSegmentation else {}
        )
        return AdaptationInputs(self.currentSourcePairs(), targets, references, node.roi)

    # ---- labelled source pairs -----------------------------------------------------------------

    def currentSourcePairs(self) -> list:
        """The listed (volume, segmentation) pairs whose nodes are still in the scene."""
        from CardiacUDASlicerLib.sources import SourcePair

        node = self._parameterNode
        if node is None:
            return []
        pairs = zip(node.sourceVolumes, node.sourceSegmentations)
        return [SourcePair(volume, segmentation) for volume, segmentation in pairs if volume and segmentation]

    def addSourcePairs(self, pairs: list) -> None:
        """Append ``pairs`` to the list (a volume listed already is not added again)."""
        from CardiacUDASlicerLib.sources import with_pairs_added

        self.setSourcePairs(with_pairs_added(self.currentSourcePairs(), pairs))

    def setSourcePairs(self, pairs: list) -> None:
        with slicer.util.NodeModify(self._parameterNode):  # one Modified event for both lists
            self._parameterNode.sourceVolumes = [pair.volume for pair in pairs]
            self._parameterNode.sourceSegmentations = [pair.segmentation for pair in pairs]

    def updateSourcePairsTable(self) -> None:
        table = self.ui.sourcePairsTable
        pairs = self.currentSourcePairs()
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            for column, node in enumerate((pair.volume, pair.segmentation)):
                table.setItem(row, column, qt.QTableWidgetItem(node.GetName()))

    def onAddSourcePair(self) -> None:
        from CardiacUDASlicerLib.sources import SourcePair

        node = self._parameterNode
        if node.sourceVolume and node.sourceSegmentation:
            self.addSourcePairs([SourcePair(node.sourceVolume, node.sourceSegmentation)])

    def onRemoveSourcePairs(self) -> None:
        selected = {index.row() for index in self.ui.sourcePairsTable.selectionModel().selectedRows()}
        self.setSourcePairs(
            [pair for row, pair in enumerate(self.currentSourcePairs()) if row not in selected]
        )

    def onAddScenePairs(self) -> None:
        from CardiacUDASlicerLib.sources import find_source_pairs

        found = find_source_pairs(slicer.mrmlScene, exclude=self._parameterNode.targetVolumes)
        self.addSourcePairs(found.pairs)
        self.log(found.summary())
        if found.unlabelled:
            self.log(_("Volumes without a segmentation: ") + ", ".join(found.unlabelled))

    def onAddSourceFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder of labelled source cases"), settingsValue("LastSourceFolder")
        )
        if not folder:
            return
        setSettingsValue("LastSourceFolder", folder)
        with slicer.util.tryWithErrorDisplay(_("The folder's cases could not be loaded."), waitCursor=True):
            from CardiacUDASlicerLib.sources import load_source_folder

            pairs = load_source_folder(slicer.mrmlScene, Path(folder), slicer.modules.segmentations.logic())
            self.addSourcePairs(pairs)
            self.log(
                _("Loaded {count} labelled cases from {folder}.").format(count=len(pairs), folder=folder)
            )

    def currentCheckpointPath(self) -> Path | None:
        text = self.ui.checkpointPathLineEdit.currentPath
        return Path(text) if text and Path(text).is_file() else None

    def currentDevice(self) -> str:
        return self.ui.deviceComboBox.currentData or "auto"

    # ---- method, device, time estimate ---------------------------------------------------------

    # Method and preset are kept in the parameter node by hand: Slicer's only QComboBox-to-str connector
    # refills the combo box from a fixed Choice list and raises without one (guiConnectors.py), while
    # these lists depend on the installed library.

    def showMethodSettings(self) -> None:
        """Select the parameter node's method and preset in the combo boxes (where they are listed)."""
        node = self._parameterNode
        if node is None:
            return
        self.ui.methodComboBox.blockSignals(True)
        self.ui.methodComboBox.currentIndex = max(self.ui.methodComboBox.findText(node.method), 0)
        self.ui.methodComboBox.blockSignals(False)
        self.fillPresetComboBox(node.preset)
        self.onPresetChanged()

    def fillPresetComboBox(self, preset: str) -> None:
        """The method's presets, selecting ``preset`` if the method has it, else its first."""
        choice = self.methodChoices.get(self.ui.methodComboBox.currentText)
        if choice is None:
            return
        self.ui.methodDescriptionLabel.text = choice.description
        self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.clear()
        for name in choice.presets:
            self.ui.presetComboBox.addItem(name)
        self.ui.presetComboBox.currentText = preset if preset in choice.presets else choice.presets[0]
        self.ui.presetComboBox.blockSignals(False)

    def onMethodChanged(self) -> None:
        self.fillPresetComboBox(self.ui.presetComboBox.currentText)
        self.onPresetChanged()

    def onPresetChanged(self) -> None:
        """Write the chosen method and preset to the parameter node (nothing while none is listed)."""
        node = self._parameterNode
        if node is not None and self.ui.methodComboBox.currentText in self.methodChoices:
            with slicer.util.NodeModify(node):
                node.method = self.ui.methodComboBox.currentText
                node.preset = self.ui.presetComboBox.currentText
        self.updateTimeEstimate()

    def onDeviceChanged(self) -> None:
        setSettingsValue("Device", self.currentDevice())
        self.updateTimeEstimate()

    def timeEstimateKey(self) -> str:
        return f"SecondsPerStep/{self.ui.methodComboBox.currentText}/{self.ui.presetComboBox.currentText}/{self.currentDevice()}"

    def updateTimeEstimate(self) -> None:
        """Seconds per step as measured by the last run of this method, preset and device, and the total."""
        choice = self.methodChoices.get(self.ui.methodComboBox.currentText)
        measured = settingsValue(self.timeEstimateKey())
        if choice is None or not measured:
            self.ui.timeEstimateLabel.text = _(
                "Time per step: measured during the first run of this method here."
            )
            return
        iterations = self.ui.iterationsSpinBox.value or choice.iterations_by_preset.get(
            self.ui.presetComboBox.currentText, 0
        )
        total_minutes = float(measured) * iterations / 60
        self.ui.timeEstimateLabel.text = _(
            "About {seconds:.2f} s per step here (last run): {iterations} steps take about {minutes:.0f} min."
        ).format(seconds=float(measured), iterations=iterations, minutes=max(total_minutes, 1))

    # ---- pretrained model and cache ------------------------------------------------------------

    def onCheckpointChanged(self, path: str) -> None:
        setSettingsValue("LastCheckpoint", path)
        if not path:
            self.ui.checkpointInfoLabel.text = _("No model loaded.")
        elif self.currentCheckpointPath() is None:
            self.ui.checkpointInfoLabel.text = _("File not found.")
        else:
            try:
                from CardiacUDASlicerLib.catalog import describe_checkpoint

                self.ui.checkpointInfoLabel.text = describe_checkpoint(path).summary()
            except ImportError:
                self.ui.checkpointInfoLabel.text = _(
                    "PyTorch is needed to read the model (installed on first run)."
                )
            except Exception as error:  # noqa: BLE001  (the label is the place to say why the file is unusable)
                self.ui.checkpointInfoLabel.text = str(error)
        self._checkCanApply()

    def fillModelComboBox(self, selectedId: str = "") -> None:
        """The manifest's models, each marked downloaded or not; selects ``selectedId`` or the last choice."""
        from CardiacUDALib.errors import CardiacUDAError

        self.modelManifest = None
        self.modelChoices = []
        try:
            from CardiacUDASlicerLib.models import model_choices

            from CardiacUDALib.weights import load_manifest

            self.modelManifest = load_manifest()
            self.modelChoices = model_choices(self.modelManifest)
        except (ImportError, CardiacUDAError) as error:
            logging.warning(f"CardiacUDA: no pretrained models listed ({error})")
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for choice in self.modelChoices:
            combo.addItem(choice.label, choice.entry.id)
        if not self.modelChoices:
            combo.addItem(_("No pretrained model listed"))
        combo.currentIndex = max(combo.findData(selectedId or settingsValue("LastModel")), 0)
        combo.blockSignals(False)

    def currentModelChoice(self) -> Any:
        index = self.ui.modelComboBox.currentIndex
        return self.modelChoices[index] if 0 <= index < len(self.modelChoices) else None

    def updateModelButtons(self) -> None:
        choice = self.currentModelChoice()
        downloading = self.download is not None
        self.ui.modelComboBox.enabled = bool(self.modelChoices) and not downloading
        self.ui.modelDownloadButton.enabled = choice is not None and choice.local is None and not downloading
        self.ui.modelImportButton.enabled = self.modelManifest is not None and not downloading
        self.ui.modelCancelButton.enabled = downloading

    def onModelChanged(self) -> None:
        """A downloaded model becomes the trained model that Segment / Adapt use."""
        choice = self.currentModelChoice()
        self.updateModelButtons()
        if choice is None:
            return
        setSettingsValue("LastModel", choice.entry.id)
        if choice.local is not None:
            self.ui.checkpointPathLineEdit.currentPath = str(choice.local)

    def showModel(self, modelId: str) -> None:
        """List the models again (one is now downloaded) and use ``modelId``'s file."""
        self.fillModelComboBox(modelId)
        self.onModelChanged()

    def onDownloadModel(self) -> None:
        from CardiacUDASlicerLib.models import ModelDownload

        choice = self.currentModelChoice()
        if choice is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The download could not start."), waitCursor=True):
            download = ModelDownload(choice.entry)
            download.start()
            self.download = download
        if self.download is None:
            return
        self.ui.modelProgressBar.setRange(0, 100)
        self.ui.modelProgressBar.value = 0
        self.log(_("Downloading {title}...").format(title=choice.entry.title))
        self.downloadTimer.start()
        self.updateModelButtons()

    def onCancelDownload(self) -> None:
        if self.download is not None:
            self.download.cancel()

    def onPollDownload(self) -> None:
        """Show the download's progress; once it has ended, use its file or say why there is none."""
        download = self.download
        outcome = download.poll()
        self.ui.modelProgressBar.value = int(100 * download.done / max(download.total, 1))
        if outcome is None:
            return
        self.downloadTimer.stop()
        self.download = None
        if outcome.path is not None:
            self.log(_("Downloaded {path}.").format(path=outcome.path))
            self.showModel(download.entry.id)
        elif outcome.cancelled:
            self.log(_("Download cancelled; Download resumes it."))
        else:
            self.log(_("Download failed: {error}").format(error=outcome.error))
            slicer.util.errorDisplay(outcome.error, windowTitle=_("CardiacUDA"))
        self.updateModelButtons()

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Model file to import"), "", _("CardiacUDA model (*.pt)")
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model file could not be imported."), waitCursor=True):
            from CardiacUDASlicerLib.models import import_model_file

            choice = import_model_file(Path(path), self.modelManifest)
            self.log(_("Imported {path} as {title}.").format(path=path, title=choice.entry.title))
            self.showModel(choice.entry.id)

    def onOpenCache(self) -> None:
        folder = self.logic.cacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onClearCache(self) -> None:
        from CardiacUDASlicerLib.cache import clear_cache, folder_size_bytes

        folder = self.logic.cacheFolder()
        size_mb = folder_size_bytes(folder) / 2**20
        question = _("Delete every stored run and weights file in {folder} ({size:.0f} MB)?").format(
            folder=folder, size=size_mb
        )
        if not slicer.util.confirmOkCancelDisplay(question):
            return
        keep = None if self.execution is None or self.execution.finished else self.execution.run.root
        freed = clear_cache(folder, keep)
        self.log(_("Cache cleared: {size:.0f} MB freed.").format(size=freed / 2**20))

    # ---- running -------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(f"CardiacUDA: {text}")

    def onTrainButton(self) -> None:
        if self.execution is not None and not self.execution.finished:
            self.log(_("Stopping: the running job saves its checkpoint first."))
            self.execution.request_stop()
            self.ui.trainButton.enabled = False
            return
        self.onStartRun("train")

    def confirmInstall(self, question: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(
            question, windowTitle=_("CardiacUDA: install Python packages")
        )

    def onStartRun(self, actionName: str) -> None:
        """``train``, or what to do with the trained model (a ``ModelAction`` value: segment, adabn,
        self_training)."""
        from CardiacUDASlicerLib.adaptation import WORK_DIR, RunMode

        from CardiacUDALib.jobs import TrainJob

        with slicer.util.tryWithErrorDisplay(_("CardiacUDA could not start."), waitCursor=True):
            self.logic.ensureDependencies(self.confirmInstall)
            if not self.methodChoices:
                self.fillMethodComboBox()
                self.showMethodSettings()
            node = self._parameterNode
            job = TrainJob(
                method=node.method,
                out_dir=WORK_DIR,
                preset=node.preset,
                overrides={"iterations": node.iterations} if node.iterations else {},
                device=self.currentDevice(),
            )
            mode = RunMode.TRAIN
            if actionName != "train":
                from CardiacUDASlicerLib.models import ModelAction, job_for_model

                job, mode = job_for_model(self.currentCheckpointPath(), ModelAction(actionName), job)
            inputs = self.currentInputs()
            self.startExecution(self.logic.startRun(inputs, job, mode), inputs.target_volumes)

    def onResumeRun(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Run folder to resume"), str(self.logic.runsFolder())
        )
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("This run cannot be resumed."), waitCursor=True):
            self.logic.ensureDependencies(self.confirmInstall)
            self.startExecution(self.logic.resumeRun(Path(folder)), [])

    def onLoadRun(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Run folder to load"), str(self.logic.runsFolder())
        )
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("The results of this run cannot be loaded."), waitCursor=True):
            from CardiacUDASlicerLib.adaptation import AdaptationRun

            self.showResults(self.logic.importRun(AdaptationRun.load(folder), []))

    def startExecution(self, execution: Any, targets: list[vtkMRMLScalarVolumeNode]) -> None:
        self.execution = execution
        self.executionTargets = targets
        self.ui.logTextEdit.clear()
        self.log(_("Run folder: {folder}").format(folder=execution.run.root))
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress event
        self.ui.trainButton.text = _("Cancel")
        self.timer.start()
        self._checkCanApply()

    def onPollWorker(self) -> None:
        """Read the worker's events (never blocking) and import the results once the run has ended."""
        for event in self.execution.poll():
            self.showEvent(event)
        if not self.execution.finished:
            return
        self.timer.stop()
        outcome = self.execution.outcome
        self.ui.trainButton.text = _("Train and segment targets")
        self.ui.progressBar.setRange(0, 100)
        if outcome.error is not None:
            self.log(_("Failed: {error}").format(error=outcome.error))
            slicer.util.errorDisplay(outcome.error, windowTitle=_("CardiacUDA"))
        elif outcome.stopped:
            self.log(_("Stopped. Its last checkpoint is kept: 'Resume a run...' continues it."))
        else:
            with slicer.util.tryWithErrorDisplay(_("The results could not be imported."), waitCursor=True):
                self.showResults(self.logic.importRun(self.execution.run, self.executionTargets))
                self.log(_("Done."))
        self._checkCanApply()

    def showEvent(self, event: dict) -> None:
        """Progress bar, log lines and the measured time per step."""
        from CardiacUDASlicerLib.jobrunner import seconds_per_step

        kind = event.get("event")
        if kind == "progress":
            self.ui.progressBar.setRange(0, int(event["total"]))
            self.ui.progressBar.value = int(event["step"])
            losses = ", ".join(f"{name} {value:.3g}" for name, value in event.get("losses", {}).items())
            self.ui.progressBar.setFormat(f"{event.get('case', _('step'))} %v/%m {losses}")
            measured = seconds_per_step(event)
            if measured is not None:
                setSettingsValue(self.timeEstimateKey(), f"{measured:.4f}")
        elif kind == "validation":
            self.log(_("Validation Dice: ") + ", ".join(f"{k} {v:.3f}" for k, v in event["dice"].items()))
        elif kind == "warning":
            self.log(_("Warning: ") + str(event["message"]))
        elif kind in ("status", "log", "checkpoint", "stopped", "trained"):
            self.log(str(event.get("message") or event.get("selection") or event.get("path") or kind))

    def showResults(self, imported: Any) -> None:
        """Select the new nodes as outputs and show the first target with its segmentation (and translation)."""
        node = self._parameterNode
        if imported.segmentations:
            segmentation = next(iter(imported.segmentations.values()))
            node.outputSegmentation = segmentation
            target = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            slicer.util.setSliceViewerLayers(background=target, fit=True)
        if imported.translations:
            translated = next(iter(imported.translations.values()))  # the first source's
            node.translatedVolume = translated
            pairs = self.currentSourcePairs()
            self.logic.showSideBySide(pairs[0].volume if pairs else None, translated)
        if imported.metrics_table is not None:
            node.metricsTable = imported.metrics_table
        self.ui.outputsCollapsibleButton.collapsed = False

    def onCompareResults(self) -> None:
        """Reliability map, pairwise Dice table and one slice view per checked segmentation."""
        with slicer.util.tryWithErrorDisplay(_("The results cannot be compared."), waitCursor=True):
            segmentations = list(self.ui.compareSegmentationsSelector.checkedNodes())
            targets = list(self._parameterNode.targetVolumes) if self._parameterNode else []
            comparison = self.logic.compareResults(segmentations, targets[0] if targets else None)
            self._parameterNode.metricsTable = comparison.table_node
            self.log(comparison.table.markdown())


class CardiacUDALogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, usable without it (scripts, the self test); never opens a dialog itself."""

    def getParameterNode(self) -> CardiacUDAParameterNode:
        return CardiacUDAParameterNode(super().getParameterNode())

    @staticmethod
    def loadTerminology() -> None:
        """Make the cardiac terminology selectable in the Segment Editor (the segments made here use it)."""
        from CardiacUDASlicerLib.terminology import ensure_terminology_loaded

        ensure_terminology_loaded(slicer.modules.terminologies.logic())

    def cacheFolder(self) -> Path:
        from CardiacUDASlicerLib.cache import cache_folder

        return cache_folder(slicer.app.cachePath, settingsValue("CacheFolder") or None)

    def runsFolder(self) -> Path:
        return self.cacheFolder() / "runs"

    def ensureDependencies(self, confirm: Any = None) -> None:
        """Install missing packages; ``confirm`` asks the user (GUI), ``None`` installs without asking (batch)."""
        from CardiacUDASlicerLib.dependencies import ensure_dependencies

        if slicer.app.testingEnabled():
            confirm = None
        ensure_dependencies(confirm)

    def startRun(self, inputs: Any, job: Any, mode: Any) -> Any:
        """Write the run's inputs and start its worker; returns the RunExecution (poll it, or ``wait()``).

        ``job`` is the TrainJob the user set up (see ``adaptation.prepare_run``)."""
        from CardiacUDASlicerLib.adaptation import prepare_run
        from CardiacUDASlicerLib.cache import new_run_folder
        from CardiacUDASlicerLib.execution import RunExecution

        run = prepare_run(
            inputs,
            job,
            mode,
            new_run_folder(self.cacheFolder(), job.method),
            slicer.modules.segmentations.logic(),
        )
        execution = RunExecution(run)
        execution.start()
        return execution

    def resumeRun(self, folder: Path) -> Any:
        """Start the run's main job again: a stopped training continues from its last checkpoint."""
        from CardiacUDASlicerLib.adaptation import AdaptationRun
        from CardiacUDASlicerLib.execution import RunExecution

        execution = RunExecution(AdaptationRun.load(folder))
        execution.start()
        return execution

    def importRun(self, run: Any, targets: list[vtkMRMLScalarVolumeNode]) -> Any:
        from CardiacUDASlicerLib.adaptation import import_results, target_nodes_by_case

        self.loadTerminology()
        return import_results(
            run, slicer.mrmlScene, slicer.modules.segmentations.logic(), target_nodes_by_case(run, targets)
        )

    def process(self, inputs: Any, job: Any, mode: Any) -> Any:
        """Blocking run (scripts, tests): returns the imported results, raises with the worker's message."""
        from CardiacUDALib.errors import CardiacUDAError

        execution = self.startRun(inputs, job, mode)
        outcome = execution.wait(lambda event: logging.info(f"CardiacUDA: {event}"))
        if outcome.error is not None or outcome.stopped:
            raise CardiacUDAError(outcome.error or "the run was stopped")
        return self.importRun(execution.run, inputs.target_volumes)

    def compareResults(self, segmentations: list[vtkMRMLSegmentationNode], fallbackTarget: Any = None) -> Any:
        """Compare results of one target (the volume they were made on, else ``fallbackTarget``) and show
        them side by side; returns the CardiacUDASlicerLib.compare.Comparison."""
        from CardiacUDASlicerLib.compare import compare_segmentations, comparison_target, show_comparison

        target = comparison_target(segmentations, fallbackTarget)
        comparison = compare_segmentations(target, segmentations, slicer.modules.segmentations.logic())
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutNode = layoutManager.layoutLogic().GetLayoutNode()
            show_comparison(layoutNode, target, segmentations, comparison.reliability_volume)
            slicer.util.resetSliceViews()
        return comparison

    @staticmethod
    def showSideBySide(source: vtkMRMLScalarVolumeNode | None, translated: vtkMRMLScalarVolumeNode) -> None:
        """Source on the left, its translation into the target's appearance on the right."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or source is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, volume in (("Red", source), ("Yellow", translated)):
            composite = layoutManager.sliceWidget(viewName).mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume.GetID())
        slicer.util.resetSliceViews()


class CardiacUDATest(ScriptedLoadableModuleTest):
    """In-Slicer self test: adapt a small phantom with the ``fast`` preset and check the segments."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_phantom_adaptation_gives_named_cardiac_segments()

    def test_phantom_adaptation_gives_named_cardiac_segments(self) -> None:
        import tempfile

        from CardiacUDASlicerLib.dependencies import unmet_requirements

        if unmet_requirements(["torch>=2.1"]):
            self.delayDisplay("PyTorch is not installed: the adaptation test is skipped")
            return
        from CardiacUDASlicerLib.adaptation import WORK_DIR, AdaptationInputs, RunMode
        from CardiacUDASlicerLib.segmentations import load_segmentation_file
        from CardiacUDASlicerLib.sources import SourcePair
        from CardiacUDASlicerLib.volumes import load_volume_file

        from CardiacUDALib.jobs import TrainJob
        from CardiacUDALib.phantom import write_phantom_dataset
        from CardiacUDALib.preprocess import PreprocessConfig

        self.delayDisplay("Writing a phantom")
        phantom = write_phantom_dataset(Path(tempfile.mkdtemp()), subjects=1, seed=0, size=64)
        source = load_volume_file(slicer.mrmlScene, phantom.source[0].image, "phantom source")
        target = load_volume_file(slicer.mrmlScene, phantom.target[0].image, "phantom target")
        labels = load_segmentation_file(phantom.source[0].label, source, slicer.modules.segmentations.logic())
        inputs = AdaptationInputs([SourcePair(source, labels)], [target])
        job = TrainJob(
            "source_only",
            WORK_DIR,
            preset="fast",
            overrides={"iterations": 20},
            preprocess=PreprocessConfig(size=64),
        )
        self.delayDisplay("Training (fast preset)")
        imported = CardiacUDALogic().process(inputs, job, RunMode.TRAIN)
        segmentation = imported.segmentations["phantom_target"].GetSegmentation()
        self.assertEqual([segmentation.GetNthSegmentID(i) for i in range(3)], ["MYO", "LV", "RV"])
        self.assertEqual(segmentation.GetSegment("LV").GetName(), "Left ventricle")
        self.assertIn("87878005", segmentation.GetSegment("LV").GetTerminology())
        self.delayDisplay("Test passed")
