"""What the apps (study, benchmark, demo) share: their own nnU-Net folders, the console-script
lookup, and a subprocess runner that logs each command and its output.

The apps run the real console scripts (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ...) in
subprocesses, each with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` inside its own
work folder, never the user's. The library below never imports this module (docs/design.md, "Layers").
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from nnunetv2_mtmd.errors import MTMDError

logger = logging.getLogger(__name__)

NNUNET_FOLDERS = ("raw", "preprocessed", "results")


class CommandError(MTMDError, RuntimeError):
    """A console script run by an app exited with an error."""


def console_script(name: str) -> str:
    """Path of an installed console script next to the running interpreter (the venv's ``bin``), else
    the bare name for ``PATH`` lookup: a venv's scripts must win over another installation's."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def nnunet_folders(root: Path) -> dict[str, str]:
    """``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` inside ``root``."""
    return {f"nnUNet_{k}": str(Path(root) / f"nnUNet_{k}") for k in NNUNET_FOLDERS}


def nnunet_env(root: Path, base: Mapping[str, str] | None = None, create: bool = False) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) pointing nnU-Net at folders inside
    ``root``, with ``nnUNet_n_proc_DA`` removed: nnU-Net's planning crashes with ``nnUNet_n_proc_DA=0``
    (``torch.set_num_threads(0)``), so an app sets it for training commands only.
    ``create``: make the three folders."""
    env = dict(os.environ if base is None else base)
    env.update(nnunet_folders(root))
    env.pop("nnUNet_n_proc_DA", None)
    if create:
        for folder in nnunet_folders(root).values():
            Path(folder).mkdir(parents=True, exist_ok=True)
    return env


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def run_logged(cmd: Sequence[str], log_path: Path, env: Mapping[str, str], what: str | None = None,
               error: type[Exception] = CommandError, tail_lines: int = 15,
               on_line: Callable[[str], None] | None = None) -> float:
    """Run console script ``cmd[0]`` (looked up with :func:`console_script`) with ``env``, no stdin, its
    output appended to ``log_path`` after a ``[time] $ command`` line; returns the seconds it took.

    A non-zero exit raises ``error`` naming ``what`` (default: the command), the exit code, the
    duration, the command and the last ``tail_lines`` lines of the log. ``on_line``: called with every
    output line as it arrives (after it is written to the log), e.g. a live progress parser
    (:mod:`nnunetv2_mtmd.apps.progress`)."""
    text = shlex.join(cmd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n[{_now()}] $ {text}\n")
        log.flush()
        argv = [console_script(cmd[0]), *cmd[1:]]
        if on_line is None:
            proc = subprocess.run(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        else:
            # a Python child block-buffers a pipe: without this its lines would arrive in 8 KB bursts
            live_env = {**env, "PYTHONUNBUFFERED": "1"}
            with subprocess.Popen(argv, env=live_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1) as proc:
                for line in proc.stdout or ():
                    log.write(line)
                    log.flush()
                    on_line(line)
    secs = time.time() - t0
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-tail_lines:])
        raise error(f"{what or cmd[0]} failed (exit code {proc.returncode}) after {secs:.0f} s: {text}\n"
                    f"Last lines of {log_path}:\n{tail}")
    return secs
