"""Putting larder's extension into an AI Toolkit checkout, and taking it out again."""

import os
import shutil
from pathlib import Path

from .toolkit import PROCESS_TYPE, find_aitk

#: The package installed under the checkout's extensions/ folder.
PACKAGE = "larder_sd_trainer"
#: The first line of the installed file: uninstall removes only a package that starts with it.
MARKER = "# Installed by `python -m larder.aitk install`; `python -m larder.aitk uninstall` removes it."

_SOURCE = f'''{MARKER}
"""larder's data path for AI Toolkit's trainer: process type `{PROCESS_TYPE}` (see larder's docs/aitk.md)."""

from larder.aitk.extension import AI_TOOLKIT_EXTENSIONS  # noqa: F401
'''


def install(aitk: os.PathLike) -> Path:
    """Installs the extension into the AI Toolkit checkout ``aitk``; returns its folder.

    Jobs then name ``type: larder_sd_trainer`` where they said ``sd_trainer``, from run.py or
    AI Toolkit's UI. larder must be installed in the Python environment AI Toolkit runs in.
    """
    root = find_aitk(aitk)
    folder = root / "extensions" / PACKAGE
    init = folder / "__init__.py"
    if folder.exists() and not _is_ours(init):
        raise FileExistsError(f"{folder} exists and was not installed by larder: move it aside first")
    folder.mkdir(parents=True, exist_ok=True)
    init.write_text(_SOURCE)
    return folder


def uninstall(aitk: os.PathLike) -> bool:
    """Removes the extension from ``aitk``; returns true if and only if there was one."""
    folder = find_aitk(aitk) / "extensions" / PACKAGE
    if not folder.exists():
        return False
    if not _is_ours(folder / "__init__.py"):
        raise FileExistsError(f"{folder} was not installed by larder: not removing it")
    shutil.rmtree(folder)
    return True


def _is_ours(init: Path) -> bool:
    try:
        return init.read_text().startswith(MARKER)
    except OSError:
        return False
