"""Running an AI Toolkit job with larder serving its data."""

import os
from typing import Optional

from .toolkit import PROCESS_TYPE, enter, find_aitk, make_job, read_job, served_job, tolerate_broken_model_packages


def run(job: os.PathLike, aitk: Optional[os.PathLike] = None) -> None:
    """Runs AI Toolkit's trainer on the job file ``job``, with larder serving every dataset.

    AI Toolkit is found from ``aitk``, ``$AITK_PATH`` or the current folder. Every
    ``sd_trainer`` process of the job runs as ``larder_sd_trainer``; a job larder cannot serve
    (another process type, a dataset key larder does not implement yet) stops before any model
    is loaded, naming the key.
    """
    root = find_aitk(aitk)
    enter(root)
    job_file = os.fspath(job)
    config = served_job(read_job(os.path.abspath(job_file)), job_file)
    tolerate_broken_model_packages()
    from .trainer import trainer_class

    runner = make_job(config, {PROCESS_TYPE: trainer_class()})
    runner.run()
    runner.cleanup()
