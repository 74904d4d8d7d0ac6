"""What Slicer itself accepts from the panel, written down from Slicer's and CTK's sources (no Slicer here).

Nobody can open the panel in a Slicer application on this machine, so the facts the panel relies on were
read from the sources of the versions we support, and are kept here as tables; each test checks the
module against them:

- the parameter node's GUI connectors (Slicer ``Base/Python/slicer/parameterNodeWrapper/guiConnectors.py``,
  read at tag ``v5.10.0``, a2b6d082, and at ``main``, 583e9b37: the same ``canRepresent`` rules): which
  widget class takes which parameter type, and what each insists on. ``connectGui`` builds every
  connector before connecting any, so one refused pair breaks every binding of the panel;
- the signals and slots of the widget classes that the ``.ui`` connects (their headers, at the same two
  Slicer revisions and the CTK commits they pin, dd4caeae and 5056664a): Qt connects a ``.ui``
  connection by its exact normalised signature, and the slot's argument types must equal the signal's;
- the oldest Slicer the module runs in, stated in CMake, the module and the README.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
MODULE_FILE = REPOSITORY / "CardiacUDA" / "CardiacUDA.py"
UI_FILE = REPOSITORY / "CardiacUDA" / "Resources" / "UI" / "CardiacUDA.ui"


@dataclass(frozen=True)
class GuiConnector:
    """One connector of guiConnectors.py: the widget classes it matches exactly (``type(widget) in``), the
    parameter kinds it represents, and the annotations it raises without."""

    name: str
    widget_classes: frozenset[str]
    kinds: frozenset[str]
    requires: frozenset[str] = frozenset()  # all of these annotations, else create() raises


_BOUNDED = frozenset({"bounded"})  # WithinRange, or Minimum and Maximum
# In registration order: createGuiConnector takes the first whose canRepresent matches, then create() may raise.
SLICER_GUI_CONNECTORS = (
    GuiConnector("QCheckBoxToBoolConnector", frozenset({"QCheckBox", "ctkCheckBox"}), frozenset({"bool"})),
    GuiConnector("QCheckablePushButtonToBoolConnector", frozenset({"QPushButton"}), frozenset({"bool"})),
    GuiConnector(
        "ctkCheckablePushButtonToBoolConnector", frozenset({"ctkCheckablePushButton"}), frozenset({"bool"})
    ),
    GuiConnector("QSliderOrSpinBoxToIntConnector", frozenset({"QSpinBox"}), frozenset({"int"})),
    GuiConnector("QSliderOrSpinBoxToIntConnector", frozenset({"QSlider"}), frozenset({"int"}), _BOUNDED),
    GuiConnector(
        "QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector",
        frozenset({"QDoubleSpinBox", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"}),
        frozenset({"float", "int"}),
    ),
    GuiConnector(
        "QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector",
        frozenset({"ctkSliderWidget", "qMRMLSliderWidget"}),
        frozenset({"float", "int"}),
        _BOUNDED,
    ),
    # Raises "ComboBoxToStringableConnector requires the Choice annotation" without Choice, and refills the
    # combo box from the Choice list when it has one.
    GuiConnector(
        "QComboBoxToStringableConnector",
        frozenset({"QComboBox", "ctkComboBox"}),
        frozenset({"int", "float", "str", "bool"}),
        frozenset({"Choice"}),
    ),
    GuiConnector("QComboBoxToEnumConnector", frozenset({"QComboBox", "ctkComboBox"}), frozenset({"enum"})),
    GuiConnector("QLineEditToStrConnector", frozenset({"QLineEdit"}), frozenset({"str"})),
    GuiConnector("QLabelToStrConnector", frozenset({"QLabel"}), frozenset({"str"})),
    GuiConnector("QTextEditPlainTextToStrConnector", frozenset({"QTextEdit"}), frozenset({"str"})),
    GuiConnector("ctkPathLineEditToPathConnector", frozenset({"ctkPathLineEdit"}), frozenset({"Path"})),
    GuiConnector("ctkDirectoryButtonToPathConnector", frozenset({"ctkDirectoryButton"}), frozenset({"Path"})),
    GuiConnector("qMRMLNodeComboBoxToNodeConnector", frozenset({"qMRMLNodeComboBox"}), frozenset({"node"})),
)

# Signals and slots as Qt normalises them ("const QString&" -> "QString"), own and inherited, of the
# classes the .ui connects; Slicer v5.10.0 and main, CTK dd4caeae and 5056664a (identical for these).
# The .ui's receivers of "setSegmentationNode": qMRMLSegmentationShow3DButton declares only the
# vtkMRMLSegmentationNode* overload (qMRMLSegmentationShow3DButton.h:49), unlike qMRMLSegmentsTableView.
_NODE_COMBO_BOX_SIGNALS = frozenset(
    {
        "currentNodeChanged(vtkMRMLNode*)",
        "currentNodeIDChanged(QString)",
        "nodeActivated(vtkMRMLNode*)",
        "currentNodeChanged(bool)",
        "nodeAdded(vtkMRMLNode*)",
        "nodeAddedByUser(vtkMRMLNode*)",
        "nodeAboutToBeRemoved(vtkMRMLNode*)",
        "currentNodeRenamed(QString)",
        "nodeAboutToBeEdited(vtkMRMLNode*)",
    }
)
_NODE_COMBO_BOX_SLOTS = frozenset(
    {
        "setMRMLScene(vtkMRMLScene*)",
        "setCurrentNode(vtkMRMLNode*)",
        "setCurrentNode(QString)",
        "setCurrentNodeID(QString)",
        "setCurrentNodeIndex(int)",
        "addNode(QString)",
        "addNode()",
        "removeCurrentNode()",
        "editCurrentNode()",
        "renameCurrentNode()",
    }
)
# A class the .ui connects that is missing here needs its row, read from its header, first.
SLICER_SIGNALS = {
    "qMRMLWidget": frozenset({"mrmlSceneChanged(vtkMRMLScene*)"}),
    "qMRMLNodeComboBox": _NODE_COMBO_BOX_SIGNALS,
    "qMRMLCheckableNodeComboBox": _NODE_COMBO_BOX_SIGNALS | {"checkedNodesChanged()"},
    "qMRMLTableView": frozenset({"mrmlSceneChanged(vtkMRMLScene*)", "selectionChanged()"}),
    "qMRMLSegmentationShow3DButton": frozenset(),
}
SLICER_SLOTS = {
    "qMRMLWidget": frozenset({"setMRMLScene(vtkMRMLScene*)"}),
    "qMRMLNodeComboBox": _NODE_COMBO_BOX_SLOTS,
    "qMRMLCheckableNodeComboBox": _NODE_COMBO_BOX_SLOTS | {"check(vtkMRMLNode*)", "uncheck(vtkMRMLNode*)"},
    "qMRMLTableView": frozenset(
        {
            "setMRMLScene(vtkMRMLScene*)",
            "setMRMLTableViewNode(vtkMRMLTableViewNode*)",
            "setMRMLTableNode(vtkMRMLTableNode*)",
            "setMRMLTableNode(vtkMRMLNode*)",
            "setTransposed(bool)",
            "setFirstRowLocked(bool)",
            "setFirstColumnLocked(bool)",
            "copySelection()",
            "pasteSelection()",
            "plotSelection()",
            "insertRow()",
            "insertColumn()",
            "deleteRow()",
            "deleteColumn()",
        }
    ),
    "qMRMLSegmentationShow3DButton": frozenset(
        {"setSegmentationNode(vtkMRMLSegmentationNode*)", "setLocked(bool)"}
    ),
}
SLICER_MINIMUM = (5, 10)


def parameter_kinds() -> dict[str, tuple[str, frozenset[str]]]:
    """Each field of the parameter node class: (its kind for the connectors, the annotations on it)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "CardiacUDAParameterNode"
    )
    return {
        item.target.id: _kind(item.annotation) for item in wrapper.body if isinstance(item, ast.AnnAssign)
    }


def _kind(annotation: ast.expr) -> tuple[str, frozenset[str]]:
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        base, *extras = annotation.slice.elts
        names = {
            ast.unparse(extra.func) if isinstance(extra, ast.Call) else ast.unparse(extra) for extra in extras
        }
        if "WithinRange" in names or {"Minimum", "Maximum"} <= names:
            names.add("bounded")
        return _kind(base)[0], frozenset(names)
    text = ast.unparse(annotation)
    if text.startswith("vtkMRML"):
        return "node", frozenset()
    if text in ("int", "float", "str", "bool"):
        return text, frozenset()
    if text in ("Path", "pathlib.Path"):
        return "Path", frozenset()
    return text, frozenset()  # lists, dicts: no connector takes them


def ui_bindings() -> dict[str, str]:
    """``SlicerParameterName`` -> the class of the widget that carries it."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {
        prop.findtext("string"): widget.get("class")
        for widget in root.iter("widget")
        for prop in widget.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }


def accepted_by_slicer(widget_class: str, kind: str, annotations: frozenset[str]) -> str | None:
    """None when Slicer's connectors build this pair, else why not (as ``createGuiConnector`` decides)."""
    for connector in SLICER_GUI_CONNECTORS:
        if widget_class in connector.widget_classes and kind in connector.kinds:
            missing = connector.requires - annotations
            return f"{connector.name} raises without {sorted(missing)}" if missing else None
    return f"no connector takes a {widget_class} with a {kind}"


def test_every_parameter_binding_is_a_pair_that_slicers_connectors_accept():
    kinds = parameter_kinds()
    bindings = ui_bindings()
    assert bindings, "the .ui binds no parameter"
    refused = {
        name: accepted_by_slicer(widget_class, *kinds[name])
        for name, widget_class in bindings.items()
        if accepted_by_slicer(widget_class, *kinds[name]) is not None
    }
    assert not refused, refused


@pytest.mark.parametrize(
    ("widget_class", "annotation", "accepted"),
    [
        ("QComboBox", "str", False),  # the panel's method and preset combo boxes before the fix
        ("QComboBox", "Annotated[str, Choice(['a'])]", True),
        ("QSpinBox", "Annotated[int, WithinRange(0, 10)]", True),
        ("QSlider", "int", False),
        ("qMRMLNodeComboBox", "vtkMRMLScalarVolumeNode", True),
        ("qMRMLCheckableNodeComboBox", "list[vtkMRMLScalarVolumeNode]", False),
    ],
)
def test_the_connector_table_decides_as_slicer_does(widget_class, annotation, accepted):
    kind = _kind(ast.parse(annotation, mode="eval").body)
    assert (accepted_by_slicer(widget_class, *kind) is None) == accepted


def _arguments(signature: str) -> list[str]:
    inside = signature[signature.index("(") + 1 : signature.rindex(")")]
    return [argument.strip() for argument in inside.split(",") if argument.strip()]


def test_every_ui_connection_names_a_declared_signal_and_slot_with_matching_arguments():
    root = ElementTree.parse(UI_FILE).getroot()
    classes = {widget.get("name"): widget.get("class") for widget in root.iter("widget")}
    connections = list(root.iter("connection"))
    assert connections
    for connection in connections:
        sender, receiver = classes[connection.findtext("sender")], classes[connection.findtext("receiver")]
        signal, slot = connection.findtext("signal"), connection.findtext("slot")
        assert sender in SLICER_SIGNALS and receiver in SLICER_SLOTS, f"add {sender}/{receiver} to the tables"
        assert signal in SLICER_SIGNALS[sender], f"{sender} has no signal {signal}"
        assert slot in SLICER_SLOTS[receiver], (
            f"{receiver} has no slot {slot} (it has {sorted(SLICER_SLOTS[receiver])})"
        )
        signal_arguments, slot_arguments = _arguments(signal), _arguments(slot)
        # Qt's checkConnectArgs: the slot takes a prefix of the signal's arguments, of the very same types.
        assert signal_arguments[: len(slot_arguments)] == slot_arguments, f"{signal} -> {slot}"


def _ui_calls(method: str) -> list[tuple[str, list[ast.expr]]]:
    """``self.ui.<widget>.<method>(args)`` in the module file: (widget, args) each."""
    found = []
    for node in ast.walk(ast.parse(MODULE_FILE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            owner = ast.unparse(node.func.value)
            if owner.startswith("self.ui."):
                found.append((owner.removeprefix("self.ui."), node.args))
    return found


def test_every_signal_the_panel_connects_by_signature_is_declared_by_its_widget():
    classes = {
        widget.get("name"): widget.get("class")
        for widget in ElementTree.parse(UI_FILE).getroot().iter("widget")
    }
    connected = [
        (name, args[0].value)
        for name, args in _ui_calls("connect")
        if args and isinstance(args[0], ast.Constant)
    ]
    assert ("outputSegmentationSelector", "currentNodeChanged(vtkMRMLNode*)") in connected
    for name, signal in connected:
        assert signal in SLICER_SIGNALS[classes[name]], f"{classes[name]} has no signal {signal}"


def test_the_show_3d_button_gets_its_segmentation_node_from_python():
    """Its only slot takes vtkMRMLSegmentationNode*, which no .ui connection from a node selector can feed."""
    assert [name for name, _args in _ui_calls("setSegmentationNode")] == ["show3DButton"]


def test_the_minimum_slicer_version_is_one_in_cmake_the_module_and_the_readme():
    cmake = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    stated = re.search(r'set\(CardiacUDA_MINIMUM_SLICER_VERSION "(\d+)\.(\d+)"\)', cmake)
    assert stated and "if(Slicer_VERSION VERSION_LESS CardiacUDA_MINIMUM_SLICER_VERSION)" in cmake
    assert "message(FATAL_ERROR" in cmake
    version = (int(stated[1]), int(stated[2]))
    assert version == SLICER_MINIMUM
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    assigned = next(
        node.value
        for node in module.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "MINIMUM_SLICER_VERSION"
    )
    assert ast.literal_eval(assigned) == version
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    assert f"Slicer {version[0]}.{version[1]} or later" in readme


def test_an_older_slicer_reaches_the_version_check_before_anything_fails():
    """Slicer 5.8 runs Python 3.9: the module file must parse there, and check the version before any
    statement that 3.9 cannot run (``X | None`` in a signature is evaluated when its ``def`` runs)."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    module = ast.parse(source, feature_version=(3, 9))
    check = next(
        index
        for index, node in enumerate(module.body)
        if isinstance(node, ast.If) and "MINIMUM_SLICER_VERSION" in ast.unparse(node.test)
    )
    assert all(
        isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign)) for node in module.body[:check]
    )
