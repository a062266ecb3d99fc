"""Exceptions raised for bad user input, and small helpers that make their messages useful.

Every user-facing error in the plugin is an :class:`MTMDError`. Command-line entry points catch it
and print ``error: <message>`` (exit code 2) instead of a traceback. Messages say what was wrong,
where (file, key, case), what was expected and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MTMDError(Exception):
    """Base class of all user-facing errors of nnunetv2-mtmd."""


class DomainSpecError(MTMDError, ValueError):
    """The domain block of a dataset.json or plans file is missing or malformed."""


class InputDataError(MTMDError, ValueError):
    """Images, labels or dataset files given to a plugin command are unusable."""


class OutputExistsError(MTMDError, FileExistsError):
    """A command would overwrite existing output and was not told it may."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest valid name, or a list of the valid names."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{close[0]}'?"
    if choices:
        return f" Valid names: {', '.join(choices)}."
    return ""
