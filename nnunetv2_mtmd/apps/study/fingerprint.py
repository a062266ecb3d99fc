"""Model-code fingerprints: which code every model of the study was trained with.

A fingerprint is taken when a training starts, and again whenever it is continued (``--c``) or only
validated (``--val``): a sha256 over the source of the library modules a training imports (every
``.py`` file of the package except ``apps/`` and ``cli/``, :func:`model_code_sha256`) and the
installed versions of :data:`FINGERPRINT_PACKAGES`, shortened to 12 hex digits
(:func:`fingerprint_id`). The package and the versions are those the training's interpreter finds
with the training's environment (:func:`training_code`, a probe in a subprocess): a snapshot on
``PYTHONPATH`` counts, whatever copy the study process itself runs.

``state.json`` keeps every take per model (key ``fingerprints``, the model's ``train:`` key, a list
of takes); a model whose takes differ is :data:`MIXED`. The report lists them and says, next to
every comparison, when the compared models mix fingerprints (:func:`code_mix_note`)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.constants import SCHEME_LABELS

logger = logging.getLogger(__name__)

#: The installed packages whose versions are part of a fingerprint.
FINGERPRINT_PACKAGES = ("nnunetv2", "torch", "dynamic-network-architectures")
#: Parts of the package a training does not import (the apps and the command lines).
NOT_MODEL_CODE = ("apps", "cli")
#: The fingerprint of a model whose takes differ (continued with other code than it started with).
MIXED = "mixed"
STATE_KEY = "fingerprints"

_PROBE = """\
import importlib.metadata as md, importlib.util, json, sys
spec = importlib.util.find_spec("nnunetv2_mtmd")
versions = {}
for name in sys.argv[1:]:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
package = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None
print(json.dumps({"package": package, "versions": versions}))
"""


def model_key(fold: int, scheme: str, dataset: str) -> str:
    """The key of one model in ``state.json`` (its ``done``, ``seconds`` and fingerprint entries)."""
    return f"train:fold{fold}:{scheme}:{dataset}"


def model_code_files(package_dir: Path) -> list[Path]:
    """Every ``.py`` file of the package at ``package_dir`` that a training imports (all but
    :data:`NOT_MODEL_CODE`), sorted by relative path."""
    package_dir = Path(package_dir)
    out = []
    for p in package_dir.rglob("*.py"):
        parts = p.relative_to(package_dir).parts
        if parts[0] not in NOT_MODEL_CODE and "__pycache__" not in parts:
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(package_dir).as_posix())


def model_code_sha256(package_dir: Path) -> str:
    """sha256 over the relative path, length and bytes of every file of :func:`model_code_files`."""
    package_dir = Path(package_dir)
    files = model_code_files(package_dir)
    if not files:
        raise FileNotFoundError(f"No Python file under {package_dir}: is it the nnunetv2_mtmd package folder?")
    h = hashlib.sha256()
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.relative_to(package_dir).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def fingerprint_id(code_sha256: str, versions: Mapping[str, str | None]) -> str:
    """The fingerprint: 12 hex digits of sha256 over the code's sha256 and the package versions."""
    blob = json.dumps({"code": code_sha256, "versions": dict(sorted(versions.items()))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _this_process_code() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in FINGERPRINT_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"package": str(Path(__file__).resolve().parents[2]), "versions": versions}


def training_code(env: Mapping[str, str], python: str | None = None) -> dict[str, Any]:
    """``{"package": folder, "versions": {...}, "probe": how}``: the nnunetv2_mtmd package folder and
    the versions of :data:`FINGERPRINT_PACKAGES` that a training started with ``env`` sees.

    Found by ``python -P`` (the interpreter of the console scripts; ``-P``: no current folder on
    ``sys.path``, as for a console script), which looks the package up without importing it. When the
    probe fails, this process's package and versions are used and the reason is logged."""
    python = python or sys.executable
    try:
        proc = subprocess.run([python, "-P", "-c", _PROBE, *FINGERPRINT_PACKAGES], env=dict(env),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        found = json.loads(proc.stdout) if proc.returncode == 0 else None
        why = f"exit code {proc.returncode}: {proc.stderr.strip()[-300:]}"
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        found, why = None, f"{type(e).__name__}: {e}"
    if found and found.get("package"):
        return {**found, "probe": "training environment"}
    logger.warning("[fingerprint] could not ask the training's interpreter which code it imports (%s); "
                   "fingerprinting the study process's own package instead", why)
    return {**_this_process_code(), "probe": f"study process (probe failed: {why})"}


def take_fingerprint(env: Mapping[str, str], status: str, at: str) -> dict[str, Any]:
    """One fingerprint take for a training about to run in state ``status`` (new, resume, validate)."""
    code = training_code(env)
    sha = model_code_sha256(Path(code["package"]))
    return {"fingerprint": fingerprint_id(sha, code["versions"]), "code_sha256": sha,
            "versions": code["versions"], "package": code["package"], "probe": code["probe"],
            "status": status, "at": at}


def this_code_fingerprint() -> str:
    """The fingerprint of the code this process runs (the code that writes the report)."""
    code = _this_process_code()
    return fingerprint_id(model_code_sha256(Path(code["package"])), code["versions"])


def model_fingerprint(takes: Sequence[Mapping[str, Any]] | None) -> str | None:
    """A model's fingerprint: the one all its takes share, :data:`MIXED` when they differ, None
    without a take (trained before fingerprints were recorded)."""
    ids = {t["fingerprint"] for t in takes or ()}
    if not ids:
        return None
    return ids.pop() if len(ids) == 1 else MIXED


def fingerprint_cell(takes: Sequence[Mapping[str, Any]] | None) -> str:
    """A model's fingerprint for a table (``--stage status``): the id, ``mixed (a, b)`` or ``-``."""
    fp = model_fingerprint(takes)
    if fp is None:
        return "-"
    if fp == MIXED:
        return f"{MIXED} ({', '.join(dict.fromkeys(t['fingerprint'] for t in takes or ()))})"
    return fp


Models = Mapping[str, Sequence[tuple[str, str]]]


def unit_fingerprints(fingerprints: Mapping[str, Sequence[Mapping[str, Any]]], models: Models,
                      schemes: Sequence[str], folds: Sequence[int]) -> dict[str, list[str]]:
    """Fingerprint (or :data:`MIXED`, or ``"not recorded"``) -> the compared models that have it, as
    ``"<label> fold <f>"`` (with the dataset when the models of one scheme and fold differ)."""
    out: dict[str, list[str]] = {}
    for s in schemes:
        for f in folds:
            per_model = {ds: model_fingerprint(fingerprints.get(model_key(f, s, ds))) or "not recorded"
                         for ds, _ in models.get(s, ())}
            name = f"{SCHEME_LABELS.get(s, s)} fold {f}"
            if len(set(per_model.values())) == 1:
                out.setdefault(next(iter(per_model.values())), []).append(name)
            else:
                for ds, fp in per_model.items():
                    out.setdefault(fp, []).append(f"{name} ({ds})")
    return out


def code_mix_note(fingerprints: Mapping[str, Sequence[Mapping[str, Any]]], models: Models,
                  schemes: Sequence[str], folds: Sequence[int], what: str = "this comparison",
                  short: bool = False) -> str:
    """A plain sentence when the models of ``schemes`` x ``folds`` were not all trained with one model
    code ("" when they were, and when no model has a recorded fingerprint at all); ``short``: without
    the list of models (for a table under a full note)."""
    units = unit_fingerprints(fingerprints, models, schemes, folds)
    if set(units) <= {"not recorded"} or len(units) == 1 and MIXED not in units:
        return ""
    if short:
        return (f"**Mixed model code in {what}**: the compared models were not all trained with the same model "
                "code (which models: the note at the top of this section, and \"Model code\").")
    order = sorted(units, key=lambda k: (k in (MIXED, "not recorded"), k))
    parts = []
    for k in order:
        label = {"not recorded": "no fingerprint recorded", MIXED: "mixed within one training"}.get(k, f"`{k}`")
        parts.append(f"{label}: {', '.join(units[k])}")
    return (f"**Mixed model code in {what}**: the compared models were not all trained with the same model code "
            f"({'; '.join(parts)}). Differences may come from the code, not only from the schemes; see "
            "\"Model code\".")
