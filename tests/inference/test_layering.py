"""Inference and training do not import each other (read from the sources, so lazy imports count).

Inference looks a checkpoint's trainer class up by name through nnU-Net at run time; training
installs the predictor's input check through ``nnunetv2_mtmd.compat``. The one import of training
by inference went when the safe checkpoint reader moved below both rooms, into ``nnunetv2_mtmd.io``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "nnunetv2_mtmd"
#: (importing module, imported module) pairs allowed for now.
KNOWN: set[tuple[str, str]] = set()


def _imports(room: str) -> set[tuple[str, str]]:
    found = set()
    for path in sorted((PKG / room).rglob("*.py")):
        module = ".".join(("nnunetv2_mtmd", *path.relative_to(PKG).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found.update((module, n) for n in names)
    return found


def _of(pairs: set[tuple[str, str]], room: str) -> set[tuple[str, str]]:
    prefix = f"nnunetv2_mtmd.{room}"
    return {(m, n) for m, n in pairs if n == prefix or n.startswith(prefix + ".")}


def test_inference_does_not_import_training():
    pairs = _of(_imports("inference"), "training")
    assert {(m, n) for m, n in pairs if not any(m == a and n.startswith(b) for a, b in KNOWN)} == set()


def test_training_does_not_import_inference():
    assert _of(_imports("training"), "inference") == set()
