"""The study's record of finished steps (``state.json``), the hardware and the code's commit."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.constants import STATE_VERSION, WORKDIR_ENV, StudyError
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_write_text, load_json


# ------------------------------------------------------------------------------------------ state
class StudyState:
    """``DIR/state.json``: the study's configuration and what is done. Saved atomically after every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # --jobs > 1: trainings finish in worker threads, which record their commands and seconds here
        self._lock = threading.RLock()
        if self.path.is_file():
            self.data = load_json(self.path)
            if self.data.get("version") != STATE_VERSION:
                raise StudyError(f"{self.path} has version {self.data.get('version')}, expected {STATE_VERSION}.")
        else:
            self.data = {"version": STATE_VERSION, "created": _now(), "config": None, "done": {},
                         "seconds": {}, "commands": []}

    @property
    def config(self) -> dict[str, Any] | None:
        return self.data.get("config")

    def set_config(self, config: Mapping[str, Any]) -> None:
        """Record ``config`` on the first run; later runs must agree (else :class:`InputDataError`)."""
        old = self.config
        if old is None:
            self.data["config"] = json.loads(json.dumps(config))
            self.save()
            return
        diff = config_differences(old, config)
        if diff:
            raise InputDataError(
                f"{self.path} was created with a different study configuration: " + "; ".join(diff)
                + ". Results of different budgets must not be mixed: re-run without these options (the recorded "
                "values are used) or use a new --workdir."
            )

    def is_done(self, step: str) -> bool:
        return step in self.data["done"]

    def mark_done(self, step: str, **info: Any) -> None:
        with self._lock:
            self.data["done"][step] = {"at": _now(), **info}
            self.save()

    def unmark(self, step: str) -> None:
        if self.data["done"].pop(step, None) is not None:
            self.save()

    def add_seconds(self, key: str, seconds: float) -> None:
        with self._lock:
            self.data["seconds"][key] = self.data["seconds"].get(key, 0.0) + float(seconds)
            self.save()

    def add_fingerprint(self, key: str, take: Mapping[str, Any], restart: bool = False) -> None:
        """Append one model-code fingerprint take (:mod:`~nnunetv2_mtmd.apps.study.fingerprint`) to the
        model ``key``; ``restart``: the model trains from scratch, so its earlier takes are dropped."""
        with self._lock:
            fps = self.data.setdefault("fingerprints", {})
            fps[key] = ([] if restart else list(fps.get(key, []))) + [dict(take)]
            self.save()

    def add_command(self, command: str) -> None:
        with self._lock:
            if command not in self.data["commands"]:
                self.data["commands"].append(command)
                self.save()

    def save(self) -> None:
        with self._lock:
            atomic_write_text(self.path, json.dumps(self.data, indent=2))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences ``key: recorded X, now Y`` between two (nested) configurations."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: recorded {a!r}, now {b!r}")
    return out


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def default_workdir() -> Path:
    """``$MTMD_STUDY_DIR`` or ``~/mtmd_study``."""
    return Path(os.environ.get(WORKDIR_ENV) or Path.home() / "mtmd_study").expanduser()


# ------------------------------------------------------------------------------------- hardware
def hardware_info() -> dict[str, Any]:
    """nproc, CPU model (/proc/cpuinfo), RAM (/proc/meminfo), OS, Python/torch/nnunetv2 versions."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "nnunetv2", "nnunetv2-mtmd"):
        with contextlib.suppress(PackageNotFoundError):
            info[pkg] = version(pkg)
    info["nnunetv2-mtmd commit"] = code_commit()
    # which copy of the package runs: a snapshot put first on PYTHONPATH loses against the checkout when
    # `python -m` is started from the repository root (the current directory comes first on sys.path)
    info["nnunetv2-mtmd code"] = str(COMMIT_FILE.parent)
    return info


#: ``nnunetv2_mtmd/COMMIT`` (the package root, whose files the commit covers).
COMMIT_FILE = Path(__file__).resolve().parents[2] / "COMMIT"


def code_commit(commit_file: Path = COMMIT_FILE) -> str | None:
    """The git commit of this package's code, 12 hex digits: from ``COMMIT`` when the code is a
    ``git archive`` snapshot (export-subst in .gitattributes fills it in), else ``git rev-parse`` of
    the checkout it lives in, with ``-dirty`` when files under the package are modified; None when
    neither is available (e.g. an installed wheel)."""
    with contextlib.suppress(OSError):
        text = Path(commit_file).read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40}", text):
            return text[:12]
    pkg = str(Path(commit_file).parent)
    try:
        head = subprocess.run(["git", "-C", pkg, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", pkg, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
