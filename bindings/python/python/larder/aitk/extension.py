"""larder's AI Toolkit extension: the process type ``larder_sd_trainer``.

AI Toolkit finds process types in the packages under its ``extensions/`` folder, each listing
its ``Extension`` classes in ``AI_TOOLKIT_EXTENSIONS``; ``python -m larder.aitk install PATH``
puts a package there that imports this module. Imported only by AI Toolkit, with its
``toolkit`` package on the path.
"""

from toolkit.extension import Extension  # type: ignore[import-not-found]

from .toolkit import PROCESS_TYPE


class LarderTrainerExtension(Extension):
    """AI Toolkit's SD trainer with larder serving the data."""

    uid = PROCESS_TYPE
    name = "SD Trainer (larder data path)"

    @classmethod
    def get_process(cls):
        from .trainer import trainer_class

        return trainer_class()


AI_TOOLKIT_EXTENSIONS = [LarderTrainerExtension]
