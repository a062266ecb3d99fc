"""How the study runs its steps: console scripts in logged subprocesses, library calls in this process,
Python steps as notes; each recorded in ``state.json`` (the report lists them). Also the per-folder
lock and the study log."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from nnunetv2_mtmd.apps.study.constants import LOG_FILE, StudyError
from nnunetv2_mtmd.apps.study.state import StudyState
from nnunetv2_mtmd.apps.workspace import console_script, run_logged
from nnunetv2_mtmd.errors import MTMDError

logger = logging.getLogger(__name__)

#: Kept for callers of the former study-private lookup; the one lookup is :func:`console_script`.
_bin = console_script


class StudyRunner:
    """Runs and records the study's steps in work folder ``workdir``.

    ``dry``: print each command (a Python step as ``# note``) instead of running it; nothing is
    written. Otherwise every command goes to ``DIR/study_log.txt`` and to ``state.json``'s command
    list, and a subprocess's output to ``DIR/logs/<log_name>.txt``."""

    def __init__(self, workdir: Path, state: StudyState, dry: bool = False):
        self.dir = Path(workdir)
        self.state = state
        self.dry = dry

    def command(self, step: str, cmd: Sequence[str], log_name: str, env: Mapping[str, str]) -> float:
        """Run console script ``cmd`` in a subprocess with ``env``; returns its seconds.

        A failure raises :class:`StudyError` ``Step '<step>' failed (exit code N) ...`` with the last
        lines of its log."""
        text = shlex.join(cmd)
        if self.dry:
            print(text)  # the documented output of --dry-run
            return 0.0
        log_path = self.dir / "logs" / f"{log_name}.txt"
        logger.info("[%s] $ %s   (output: %s)", step, text, log_path.relative_to(self.dir))
        self.state.add_command(text)
        secs = run_logged(cmd, log_path, env, what=f"Step '{step}'", error=StudyError)
        logger.info("[%s]   done in %.0f s", step, secs)
        return secs

    def library(self, step: str, cmd: Sequence[str], call: Callable[[], object]) -> float:
        """Run ``call`` (the library function behind the plugin's console script ``cmd[0]``) in this
        process, recorded as the equivalent command line ``cmd``; returns its seconds.

        In process, not as a subprocess: the evaluation steps are quick, and a subprocess would load
        torch and nnU-Net again for each of them. A user error of the library (:class:`MTMDError`)
        becomes :class:`StudyError` naming the step and the command."""
        text = shlex.join(cmd)
        if self.dry:
            print(text)
            return 0.0
        logger.info("[%s] $ %s", step, text)
        self.state.add_command(text)
        t0 = time.time()
        try:
            call()
        except StudyError:
            raise
        except MTMDError as e:
            raise StudyError(f"Step '{step}' failed: {text}\n{e}") from e
        secs = time.time() - t0
        logger.info("[%s]   done in %.0f s", step, secs)
        return secs

    def note(self, text: str) -> None:
        """A Python step of the study: printed as a comment in a dry run, logged and recorded otherwise."""
        if self.dry:
            print(f"# {text}")
        else:
            logger.info(text)
            self.state.add_command(f"# {text}")


def setup_study_logging(workdir: Path) -> None:
    """Send the plugin's log records to ``workdir/study_log.txt`` (and make ``workdir/logs``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    root = logging.getLogger("nnunetv2_mtmd")
    log_file = str((workdir / LOG_FILE).resolve())
    # one study log per process: a Study of another work folder created earlier in the same process
    # (tests, notebooks) must not receive this study's lines, nor keep its file open
    for h in [h for h in root.handlers if getattr(h, "_mtmd_study", False)]:
        if getattr(h, "baseFilename", None) != log_file:
            root.removeHandler(h)
            h.close()
    if not any(getattr(h, "_mtmd_study", False) for h in root.handlers):
        h = logging.FileHandler(log_file)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        h._mtmd_study = True  # type: ignore[attr-defined]
        root.addHandler(h)
        root.setLevel(logging.INFO)


@contextlib.contextmanager
def work_lock(workdir: Path, dry: bool = False) -> Iterator[None]:
    """One study process per work folder (``DIR/study.lock`` holds its pid); a dry run takes no lock."""
    if dry:
        yield
        return
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "study.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            raise StudyError(f"Another study process is running in {workdir} (pid {f.read().strip() or '?'}); "
                             "wait for it or stop it first.") from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
