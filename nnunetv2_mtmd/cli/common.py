"""Shared pieces of the console scripts: logging setup and turning MTMDError into a clean exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from nnunetv2_mtmd.errors import MTMDError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in --help (nnU-Net style) and keeps the description's line breaks."""


def run(main_impl: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI implementation; user errors print ``error: ...`` and exit with code 2, no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rc = main_impl(argv)
    except MTMDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
