"""The process environment of a benchmark run, and keeping nnU-Net's console output off the console.

The benchmark runs nnU-Net in its own process (planner, preprocessing, trainers, predictor), and
nnU-Net takes its folders only from ``os.environ``: none of these has an argument for them.
``nnunetv2.paths`` (2.8) reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` from
``os.environ`` at every use (its ``_EnvPath`` objects; earlier releases read them once, at import),
and ``nnUNetTrainer`` reads ``nnUNet_compile`` when it is initialised. So the variables must hold the
run's folders for as long as nnU-Net works, and nothing else in the process should see them:
:func:`benchmark_environment` sets exactly these four for the duration of :func:`.run.run_benchmark`
and puts the previous values back afterwards (tests/apps/test_benchmark.py checks that nnU-Net
follows them in and out).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from nnunetv2_mtmd.apps.workspace import nnunet_folders
from nnunetv2_mtmd.io import environ_set, stdout_to


@contextlib.contextmanager
def benchmark_environment(workdir: Path) -> Iterator[dict[str, str]]:
    """Set ``nnUNet_raw/preprocessed/results`` (folders inside ``workdir``, created) and
    ``nnUNet_compile=f`` in ``os.environ`` for the block; restore the previous values afterwards.

    ``nnUNet_compile=f``: the eager table compares eager code on both sides (on CUDA nnU-Net would
    compile the stock and the MTMD trainers alike).
    Yields the three folder variables."""
    folders = nnunet_folders(workdir)
    for folder in folders.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    with environ_set({**folders, "nnUNet_compile": "f"}):
        yield folders


#: nnU-Net's prints go to the benchmark's log (the one helper of the package for it).
quiet = stdout_to


@contextlib.contextmanager
def quiet_fds(log_path: Path | None) -> Iterator[None]:
    """Redirect the process-level stdout and stderr (file descriptors 1 and 2, which C++ libraries such
    as the profiler's kineto write to, bypassing ``sys.stdout``) into ``log_path``."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
