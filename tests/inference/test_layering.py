"""Inference does not import training, and training imports inference only where it must read a trained
model (read from the sources, so lazy imports count).

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


#: Training modules that may read a trained model through inference (the layers allow it: inference sits
#: below training). Only the add-domain writer does: it loads the source model to check its norms and heads.
TRAINING_READS_MODELS = {"nnunetv2_mtmd.training.add_domain"}


def test_training_imports_inference_only_to_read_trained_models():
    assert {m for m, _ in _of(_imports("training"), "inference")} <= TRAINING_READS_MODELS


def test_trainers_import_neither_inference_nor_the_modules_that_do():
    """nnU-Net's trainer lookup imports every trainer module: none of them may pull inference in."""
    trainer_pairs = {(m, n) for m, n in _imports("training") if m.startswith("nnunetv2_mtmd.training.trainers")}
    assert _of(trainer_pairs, "inference") == set()
    assert {(m, n) for m, n in trainer_pairs if any(n == r or n.startswith(r + ".") for r in TRAINING_READS_MODELS)} \
        == set()
