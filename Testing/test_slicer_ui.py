"""The panel's .ui: loads with Qt (PySide6, offscreen) and has every widget the module code touches."""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtUiTools = pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials is not installed")
from PySide6.QtCore import QFile, QIODevice, qInstallMessageHandler  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

MODULE = Path(__file__).resolve().parent.parent / "CardiacUDA"
UI_FILE = MODULE / "Resources" / "UI" / "CardiacUDA.ui"
EXPECTED_CLASSES = {  # what the module code does with each widget decides its class
    "sourceVolumeSelector": "qMRMLNodeComboBox",
    "sourceSegmentationSelector": "qMRMLNodeComboBox",
    "addSourcePairButton": "QPushButton",
    "removeSourcePairsButton": "QPushButton",
    "addScenePairsButton": "QPushButton",
    "addSourceFolderButton": "QPushButton",
    "sourcePairsTable": "QTableWidget",  # setRowCount(), setItem(), selectionModel()
    "targetVolumesSelector": "qMRMLCheckableNodeComboBox",  # checkedNodes(), setCheckState()
    "referenceSegmentationSelector": "qMRMLNodeComboBox",
    "roiSelector": "qMRMLNodeComboBox",
    "methodComboBox": "QComboBox",
    "methodDescriptionLabel": "QLabel",
    "presetComboBox": "QComboBox",
    "iterationsSpinBox": "QSpinBox",
    "deviceComboBox": "QComboBox",
    "timeEstimateLabel": "QLabel",
    "trainButton": "QPushButton",
    "resumeRunButton": "QPushButton",
    "loadRunButton": "QPushButton",
    "progressBar": "QProgressBar",
    "logTextEdit": "QPlainTextEdit",  # appendPlainText()
    "modelComboBox": "QComboBox",
    "modelDownloadButton": "QPushButton",
    "modelImportButton": "QPushButton",
    "modelCancelButton": "QPushButton",
    "modelProgressBar": "QProgressBar",
    "checkpointPathLineEdit": "ctkPathLineEdit",  # currentPath, currentPathChanged
    "checkpointInfoLabel": "QLabel",
    "segmentWithModelButton": "QPushButton",
    "adaptInstantlyButton": "QPushButton",
    "selfTrainButton": "QPushButton",
    "openCacheButton": "QPushButton",
    "clearCacheButton": "QPushButton",
    "outputsCollapsibleButton": "ctkCollapsibleButton",  # collapsed
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "show3DButton": "qMRMLSegmentationShow3DButton",  # setSegmentationNode(vtkMRMLSegmentationNode*)
    "translatedVolumeSelector": "qMRMLNodeComboBox",
    "metricsTableSelector": "qMRMLNodeComboBox",
    "compareSegmentationsSelector": "qMRMLCheckableNodeComboBox",  # checkedNodes()
    "compareButton": "QPushButton",
}


def widgets_in_ui() -> dict[str, str]:
    return {
        widget.get("name"): widget.get("class")
        for widget in ElementTree.parse(UI_FILE).getroot().iter("widget")
    }


def widgets_the_code_touches() -> set[str]:
    """Every ``self.ui.<name>`` in CardiacUDA.py."""
    tree = ast.parse((MODULE / "CardiacUDA.py").read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_node_fields() -> set[str]:
    tree = ast.parse((MODULE / "CardiacUDA.py").read_text())
    wrapper = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CardiacUDAParameterNode"
    )
    return {item.target.id for item in wrapper.body if isinstance(item, ast.AnnAssign)}


def test_every_widget_the_code_touches_exists_with_the_expected_class():
    touched = widgets_the_code_touches()
    assert touched <= set(EXPECTED_CLASSES), (
        f"give these widgets an expected class here: {touched - set(EXPECTED_CLASSES)}"
    )
    in_ui = widgets_in_ui()
    for name in touched:
        assert in_ui.get(name) == EXPECTED_CLASSES[name], f"{name}: {in_ui.get(name)} in the .ui"


def test_parameter_bindings_name_fields_of_the_parameter_node():
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {
        prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"
    }
    assert bound and bound <= parameter_node_fields()


def test_qt_loads_the_ui_with_every_custom_class_declared():
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {widget.findtext("class") for widget in root.iter("customwidget")}
    assert {cls for cls in widgets_in_ui().values() if not cls.startswith("Q")} <= declared
    messages: list[str] = []
    qInstallMessageHandler(lambda mode, context, message: messages.append(message))
    application = QApplication.instance() or QApplication([])
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QIODevice.ReadOnly)
    try:
        top = QtUiTools.QUiLoader().load(ui_file)
    finally:
        ui_file.close()
        qInstallMessageHandler(None)
    assert top is not None and application is not None
    assert not [m for m in messages if "unable to create a widget of the class" in m]
    for name, cls in EXPECTED_CLASSES.items():
        widget = top.findChild(QWidget, name)
        assert widget is not None, name
        if cls.startswith("Q"):  # Qt's own classes are real here; Slicer's fall back to their base class
            assert widget.metaObject().className() == cls, name
    assert top.findChild(QWidget, "trainButton").isEnabled() is False  # enabled once the inputs are there
