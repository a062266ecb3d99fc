"""Run a test in a forked child process, so that what it does to the process stays there.

Why: ``torch.compile`` with AOTAutograd runs autograd on fake tensors, which starts autograd's device
threads; from then on every fork-based child of the process that runs a backward pass fails with
"Unable to handle autograd's threading in combination with fork-based multiprocessing" (the
two-rank gloo tests in tests/architectures/test_dsbn.py, tests/losses/test_gradient_ratio.py and
tests/reliability/test_ddp.py fork). A compile test decorated with :func:`forked` compiles in a
child of the pytest process, which stays clean. The child runs with one torch thread (OpenMP does not
survive fork). POSIX only, like those tests.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable

import pytest
import torch

__all__ = ["forked"]


def forked(test: Callable[..., None]) -> Callable[..., None]:
    """Decorator: run ``test(*args, **kwargs)`` in ``os.fork()``'s child; a failure there fails the test
    here with the child's traceback. Fixtures are set up in the parent (the child inherits them)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run, report, exit without running pytest's teardown
            os.close(read_fd)
            status = 0
            try:
                # OpenMP's thread pool does not survive fork (a parallel region would wait forever for
                # the parent's threads), so the child runs single-threaded, as the gloo tests' children
                torch.set_num_threads(1)
                test(*args, **kwargs)
                message = b""
            except BaseException:  # everything, pytest.skip included, goes back to the parent
                message = traceback.format_exc().encode()
                status = 1
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(message)
            os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace")  # read before waiting: a full pipe would block
        _, status = os.waitpid(pid, 0)
        if status != 0 or message:
            code = os.waitstatus_to_exitcode(status)
            pytest.fail(f"{test.__name__} failed in its forked child (exit {code}):\n{message}", pytrace=False)

    return wrapper
