"""Finding an AI Toolkit checkout and loading its trainer, without editing its files."""

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger("larder.aitk")

#: The process type of AI Toolkit's trainer with larder's data path.
PROCESS_TYPE = "larder_sd_trainer"
#: The process types `python -m larder.aitk run` serves: AI Toolkit's own trainer, by either name.
SERVED_TYPES = ("sd_trainer", PROCESS_TYPE)


def is_aitk(folder: Path) -> bool:
    """Returns true if and only if ``folder`` is an AI Toolkit checkout (its run.py and toolkit/)."""
    return (folder / "run.py").is_file() and (folder / "toolkit").is_dir()


def find_aitk(given: Optional[os.PathLike] = None) -> Path:
    """The AI Toolkit checkout to use: ``given`` (``--aitk``), else ``$AITK_PATH``, else the
    current folder.

    Raises:
        FileNotFoundError: the folder named is not a checkout, or none was named and the current
            folder is not one.
    """
    for source, value in (("--aitk", given), ("AITK_PATH", os.environ.get("AITK_PATH"))):
        if value:
            folder = Path(value).expanduser().resolve()
            if not is_aitk(folder):
                raise FileNotFoundError(
                    f"{source} names {folder}, which is not an AI Toolkit checkout (it needs run.py and toolkit/)"
                )
            return folder
    here = Path.cwd()
    if is_aitk(here):
        return here
    raise FileNotFoundError(
        "AI Toolkit not found: pass --aitk PATH, set AITK_PATH, or run from the AI Toolkit folder"
    )


def enter(aitk: Path) -> None:
    """Makes AI Toolkit importable as its run.py does, with run.py's environment defaults."""
    if str(aitk) not in sys.path:
        sys.path.insert(0, str(aitk))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "YES")


def tolerate_broken_model_packages() -> None:
    """Lets AI Toolkit look up its model classes when a model package it does not need fails to
    import.

    AI Toolkit imports every package under extensions/ and extensions_built_in/ whenever it
    looks a model class up, and only an ImportError is caught: one package that raises anything
    else at import time ends every job, whatever its model. On a machine without a GPU,
    omnigen2's triton kernels call ``torch.cuda.current_device()`` at import, and omnigen2 is
    one part of ``extensions_built_in.diffusion_models``, whose ``__init__`` imports every
    model family (Flux Kontext, Qwen-Image, Wan, ...). Here a package that fails is imported
    part by part instead (its subpackages, without its ``__init__``), and a part that fails is
    left out with one warning naming it and the error; the job fails only if it asks for a
    model that was left out.
    """
    from toolkit.models.base_model import BaseModel  # type: ignore[import-not-found]
    from toolkit.paths import TOOLKIT_ROOT  # type: ignore[import-not-found]
    from toolkit.util import get_model  # type: ignore[import-not-found]

    found: List[Any] = []

    def models_of(module: Any) -> List[Any]:
        listed = getattr(module, "AI_TOOLKIT_MODELS", None)
        if isinstance(listed, list):
            return listed
        # A part of a package: the model classes it exports.
        return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseModel) and "arch" in vars(v)]

    def load(name: str, folder: str) -> None:
        try:
            found.extend(models_of(importlib.import_module(name)))
            return
        except Exception as e:  # noqa: BLE001 - any failure leaves just this package out
            error = e
        parts = _parts_imported_by(folder)
        if name.count(".") > 1 or not parts:
            log.warning("AI Toolkit's %s does not import here (%s: %s); its models are unavailable", name, type(error).__name__, error)
            return
        log.warning("AI Toolkit's %s does not import as a whole here (%s: %s); importing its parts one by one", name, type(error).__name__, error)
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None, is_package=True))
        package.__path__ = [folder]
        sys.modules[name] = package
        for part in parts:
            load(f"{name}.{part}", os.path.join(folder, part))

    def all_models() -> List[Any]:
        if not found:
            found.extend(get_model.BUILT_IN_MODELS)
            for folder in ("extensions", "extensions_built_in"):
                for package in pkgutil.iter_modules([os.path.join(TOOLKIT_ROOT, folder)]):
                    load(f"{folder}.{package.name}", os.path.join(TOOLKIT_ROOT, folder, package.name))
        return found

    get_model.get_all_models = all_models


def _parts_imported_by(folder: str) -> List[str]:
    """The subpackages a package's ``__init__.py`` imports (``from .part import ...``), in its
    order: the model families it lists, without the templates it leaves out."""
    try:
        source = Path(folder, "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return []
    names = re.findall(r"^from \.(\w+)", source, re.MULTILINE)
    return [n for i, n in enumerate(names) if n not in names[:i] and Path(folder, n).is_dir()]


def read_job(job: os.PathLike) -> Dict[str, Any]:
    """The job file as AI Toolkit reads it (its ``[name]`` substitution and file lookup)."""
    from toolkit.config import get_config  # type: ignore[import-not-found]

    return get_config(os.fspath(job))


def served_job(config: Dict[str, Any], job_file: str) -> Dict[str, Any]:
    """``config`` with every AI Toolkit trainer process turned into larder's.

    Raises:
        larder.ConfigError: the job is not an extension job of trainer processes.
    """
    from .. import ConfigError

    if config.get("job") != "extension":
        raise ConfigError(
            f"{job_file}: `job` is {config.get('job')!r}; larder serves AI Toolkit's `extension` jobs (the trainer)"
        )
    for i, process in enumerate(config["config"].get("process") or []):
        kind = process.get("type")
        if kind not in SERVED_TYPES:
            raise ConfigError(
                f"{job_file}: config.process[{i}].type is {kind!r}; larder serves "
                + " and ".join(repr(t) for t in SERVED_TYPES)
                + " processes"
            )
        process["type"] = PROCESS_TYPE
    return config


def make_job(config: Dict[str, Any], processes: Dict[str, Callable[..., Any]]) -> Any:
    """An AI Toolkit job whose process types are the classes of ``processes``.

    AI Toolkit's ExtensionJob finds its process classes by importing every extension package;
    this job is given its classes, so a job starts without importing packages it does not use.
    """
    from jobs.BaseJob import BaseJob  # type: ignore[import-not-found]

    class LarderJob(BaseJob):
        def __init__(self, config: Dict[str, Any]):
            super().__init__(config)
            self.device = self.get_conf("device", "cpu")
            self.load_processes(processes)

        def run(self) -> None:
            super().run()
            for process in self.process:
                process.run()

    return LarderJob(config)
