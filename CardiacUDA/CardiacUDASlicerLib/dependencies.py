"""Python packages at first use: PyTorch through the PyTorch extension, the rest with pip.

Slicer's own packages (numpy, SimpleITK) are never requested, so pip cannot replace the builds Slicer
ships. Everything missing is asked for in one question, in the GUI only: the caller passes a
``confirm`` callback there, and ``None`` in batch mode, which installs without asking (a dialog would
block a ``--no-main-window`` run).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import slicer
from packaging.requirements import Requirement

from CardiacUDALib.errors import CardiacUDAError

TORCH_REQUIREMENT = "torch>=2.1"
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
REQUESTER = "CardiacUDA"


class DependencyError(CardiacUDAError):
    """A package is missing or too old and was not (or could not be) installed."""


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(requirements: list[str]) -> list[str]:
    """The requirements whose package is absent or of a version outside the requirement."""
    unmet = []
    for text in requirements:
        requirement = Requirement(text)
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(text)
    return unmet


def _check_installed_torch_version() -> bool:
    """True when torch is installed and new enough; an old torch is an error (pip must not replace it here)."""
    requirement = Requirement(TORCH_REQUIREMENT)
    version = installed_version(requirement.name)
    if version is None:
        return False
    if not requirement.specifier.contains(version.split("+")[0], prereleases=True):
        raise DependencyError(
            f"PyTorch {version} is installed, but CardiacUDA needs {TORCH_REQUIREMENT}: in the PyTorch Utils "
            "module, uninstall PyTorch, restart Slicer, and install it again"
        )
    return True


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError as error:
        raise DependencyError(
            "the PyTorch extension is missing: install 'PyTorch' from the Extensions Manager and restart Slicer"
        ) from error
    requirement = TORCH_REQUIREMENT.removeprefix("torch")
    if (
        PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=requirement
        )
        is None
    ):
        raise DependencyError(
            "PyTorch could not be installed; see the Python console, or use the PyTorch Utils module"
        )


def _pip_install(requirements: list[str]) -> None:
    """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), else the older ``slicer.util.pip_install``."""
    try:
        from slicer import packaging
    except ImportError:
        for requirement in requirements:
            slicer.util.pip_install(requirement)
        return
    packaging.pip_ensure(requirements, prompt_install=False, requester=REQUESTER)


def ensure_dependencies(confirm: Callable[[str], bool] | None) -> None:
    """Install what is missing, after one ``confirm(question)`` when given; raise if refused or impossible."""
    torch_missing = not _check_installed_torch_version()
    packages = unmet_requirements(read_requirements())
    if not torch_missing and not packages:
        return
    wanted = (
        [f"PyTorch ({TORCH_REQUIREMENT}, through the PyTorch extension)"] if torch_missing else []
    ) + packages
    question = (
        "CardiacUDA needs these Python packages, which are not installed yet:\n  "
        + "\n  ".join(wanted)
        + "\nInstall them now? This downloads them and can take several minutes."
    )
    if confirm is not None and not confirm(question):
        raise DependencyError("CardiacUDA cannot run without " + ", ".join(wanted))
    if torch_missing:
        _install_torch()
    if packages:
        _pip_install(packages)
