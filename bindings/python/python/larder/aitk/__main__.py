"""`python -m larder.aitk`: run an AI Toolkit job on larder, or (un)install the extension."""

import argparse
import logging
import sys

from .. import LarderError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m larder.aitk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run AI Toolkit's trainer on a job with larder serving its data")
    run.add_argument("job", help="the AI Toolkit job file")
    run.add_argument("--aitk", help="the AI Toolkit checkout (default: $AITK_PATH, else the current folder)")
    for name, what in (("install", "put"), ("uninstall", "remove")):
        sub = commands.add_parser(name, help=f"{what} larder's extension (process type larder_sd_trainer) in an AI Toolkit checkout")
        sub.add_argument("aitk", help="the AI Toolkit checkout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "run":
            from .run import run as run_job

            run_job(args.job, args.aitk)
        elif args.command == "install":
            from .install import install

            print(f"installed {install(args.aitk)}: use `type: larder_sd_trainer` in a job's process")
        else:
            from .install import uninstall

            print("removed" if uninstall(args.aitk) else "not installed; nothing to remove")
    except (LarderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
