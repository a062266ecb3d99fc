"""The package's layers (docs/design.md, "Layers"): every import goes to the module's own layer or below,
the library never imports an app or a CLI module, and nnU-Net's trainer lookup (importing every
trainer, network, loss and planner) leaves the apps, the CLI and evaluation unimported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "nnunetv2_mtmd"

#: Layer of each top-level module or subpackage of nnunetv2_mtmd, bottom (0) to top.
LAYERS: dict[str, int] = {
    "errors": 0, "io": 0, "domains": 0, "schemes": 0, "compat": 0, "COMMIT": 0,
    "conversion": 1, "planning": 1, "architectures": 1,
    "losses": 2,
    "inference": 3,
    "training": 4,
    "evaluation": 5,
    "apps": 6,
    "cli": 7, "_registration": 7,
}
LIBRARY_TOP = max(v for k, v in LAYERS.items() if k not in ("apps", "cli", "_registration"))

#: Imports that go up a layer on purpose, with the reason; nothing else may.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    # the one compat module wraps nnU-Net's predictor with the input checks it installs (a patch)
    ("compat", "inference"): "compat installs the inference input check into nnU-Net's predictor",
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "nnunetv2_mtmd":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, repo: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``path``, function-level imports included."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(repo).with_suffix("")
    package = ".".join(rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "nnunetv2_mtmd":  # from nnunetv2_mtmd import study
                out += [(node.lineno, f"nnunetv2_mtmd.{a.name}") for a in node.names]
    return out


def _modules(pkg: Path) -> list[Path]:
    return sorted(p for p in pkg.rglob("*.py") if "_registration" not in p.parts)


def _own(path: Path, pkg: Path) -> str:
    return path.relative_to(pkg).parts[0].removesuffix(".py")


def upward_imports(pkg: Path, repo: Path, layers: dict[str, int]) -> list[str]:
    """Every import of a module of ``pkg`` into a higher layer that :data:`ALLOWED_UPWARD` does not list."""
    bad = []
    for path in _modules(pkg):
        own = _own(path, pkg)
        if own == "__init__":
            continue
        for line, mod in _imports(path, repo):
            target = _part(mod)
            if target in (None, "", own):
                continue
            if layers[target] > layers[own] and (own, target) not in ALLOWED_UPWARD:
                bad.append(f"{path.relative_to(repo)}:{line} ({own}, layer {layers[own]}) imports {mod} "
                           f"(layer {layers[target]})")
    return bad


def test_every_top_level_part_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in PKG.iterdir()
             if p.name != "__pycache__" and not p.name.startswith(".")}
    parts.discard("__init__")
    assert parts <= set(LAYERS), f"give these a layer in tests/test_layers.py and docs/design.md: {parts - set(LAYERS)}"


def test_imports_go_down_only():
    bad = upward_imports(PKG, REPO, LAYERS)
    assert not bad, "imports that go up a layer (docs/design.md, 'Layers'):\n" + "\n".join(bad)


def test_library_never_imports_apps_or_cli():
    bad = []
    for path in _modules(PKG):
        if _own(path, PKG) in ("apps", "cli", "__init__"):
            continue
        bad += [f"{path.relative_to(REPO)}:{line} imports {mod}" for line, mod in _imports(path, REPO)
                if _part(mod) in ("apps", "cli")]
    assert not bad, "\n".join(bad)
    assert LIBRARY_TOP < LAYERS["apps"]


@pytest.mark.parametrize("layers, expected", [
    ({"a": 0, "b": 1}, ["nnunetv2_mtmd/a.py:2 (a, layer 0) imports nnunetv2_mtmd.b (layer 1)"]),
    ({"a": 1, "b": 0}, []),
    ({"a": 1, "b": 1}, []),
])
def test_the_static_check_can_fail(tmp_path, layers, expected):
    """The checker itself: an upward import in a tiny fake package is reported, others are not."""
    pkg = tmp_path / "nnunetv2_mtmd"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""a"""\nfrom nnunetv2_mtmd.b import x\n')
    (pkg / "b.py").write_text("x = 1\n")
    assert upward_imports(pkg, tmp_path, layers) == expected


_PROBE = r"""
import json, sys
# what stock nnU-Net's trainer and planner imports load anyway
import nnunetv2.training.nnUNetTrainer.nnUNetTrainer
import nnunetv2.experiment_planning.experiment_planners.default_experiment_planner
stock = {m.split(".")[0] for m in sys.modules}
import nnunetv2_mtmd.training.trainers as t
import nnunetv2_mtmd.planning.planners
import nnunetv2_mtmd.architectures.unet, nnunetv2_mtmd.architectures.dsbn, nnunetv2_mtmd.architectures.heads
import nnunetv2_mtmd.architectures.label_autoencoder
import nnunetv2_mtmd.losses.combined, nnunetv2_mtmd.losses.contrastive, nnunetv2_mtmd.losses.anatomical_prior
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
import nnunetv2
import os
# nnU-Net's own lookup of a plugin trainer (what nnUNetv2_train -tr does)
cls = recursive_find_python_class(os.path.dirname(t.__file__), "nnUNetTrainerMTMD_DSL_study",
                                  "nnunetv2_mtmd.training.trainers")
added = sorted({m.split(".")[0] for m in sys.modules} - stock - {"nnunetv2_mtmd"})
print(json.dumps({"found": cls.__name__, "modules": sorted(sys.modules), "added_packages": added}))
"""


def test_trainer_lookup_imports_no_app():
    """Importing every trainer, network, loss and planner (what nnU-Net's trainer and planner lookup
    does through the registration shims) imports no app, no CLI and no evaluation module, and no
    third-party package that stock nnU-Net's own trainer and planner do not import already."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["found"] == "nnUNetTrainerMTMD_DSL_study"
    mods = out["modules"]
    plugin = [m for m in mods if m.startswith("nnunetv2_mtmd.")]
    forbidden = [m for m in plugin if _part(m) in ("apps", "cli", "evaluation")]
    assert not forbidden, f"the trainer lookup imports {forbidden}"
    assert out["added_packages"] == [], f"the plugin adds these packages to nnU-Net's lookup: {out['added_packages']}"
    assert "nnunetv2_mtmd.training.trainers.study" in plugin  # the probe did import the trainers
