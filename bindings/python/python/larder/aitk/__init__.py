"""AI Toolkit's own trainer with larder serving the data (see docs/aitk.md).

From the command line::

    python -m larder.aitk run JOB.yaml [--aitk PATH]   # AI Toolkit from --aitk, $AITK_PATH or here
    python -m larder.aitk install PATH                 # then `type: larder_sd_trainer` in a job
    python -m larder.aitk uninstall PATH
"""

from .install import install, uninstall
from .run import run
from .toolkit import PROCESS_TYPE, find_aitk

__all__ = ["PROCESS_TYPE", "find_aitk", "install", "run", "uninstall"]
