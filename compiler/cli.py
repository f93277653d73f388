"""``sparsefuse`` command line. Each subcommand lives in compiler/commands/<name>.py and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

User mistakes (SparsefuseError) print one line and exit 2; Ctrl-C exits 130 and SIGTERM 143, both
with no partial artifact (artifacts are written atomically, a stage interrupted midway removes what it
wrote); internal bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Any

from sparsefuse.errors import SparsefuseError

# One entry per module in compiler/commands/. Keep the list short and alphabetical.
COMMAND_MODULES: tuple[str, ...] = (
    "build",
    "compile",
    "data",
    "eval",
    "handoff",
    "profile",
    "prune",
    "regress",
    "targets",
    "train",
    "verify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsefuse",
        description="Deployment compiler for multimodal (camera + LiDAR) BEV perception models.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"sparsefuse.compiler.commands.{name}").register(subparsers)
    return parser


def _version() -> str:
    from sparsefuse import __version__

    return f"sparsefuse {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _terminate_like_ctrl_c()
    try:
        return int(args.func(args) or 0)
    except SparsefuseError as err:
        print(err.one_line(), file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated by SIGTERM (no partial artifact was written)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted (no partial artifact was written)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that every Ctrl-C cleanup path runs for it too."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _terminate_like_ctrl_c() -> Any:
    """Install the SIGTERM handler (main thread only); return the previous handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
