"""Stock nnU-Net console scripts find the plugin's trainers and planners with no user action, and a
broken plugin never breaks stock nnU-Net (issue 2, item 2). Everything runs the real console
scripts in subprocesses with no nnUNet_extTrainer set.

Lookup order in nnU-Net 2.8.1: modules directly in the searched folder first (alphabetically), then
its subpackages; an unknown class raises "Could not find ..." before the dataset is looked at, so an
unknown dataset id tells "class found" (dataset error) from "class not found" (lookup error).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, venv_bin

TRAINERS = ["nnUNetTrainerMTMD", "nnUNetTrainerMTMD_DSL", "nnUNetTrainerMTMD_1epoch", "nnUNetTrainerMTMD_5epochs"]
SHIMS = [
    "nnunetv2/training/nnUNetTrainer/zz_mtmd_plugin_trainers.py",
    "nnunetv2/experiment_planning/zz_mtmd_plugin_planners.py",
]


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _found_class(proc: subprocess.CompletedProcess) -> bool:
    out = proc.stdout + proc.stderr
    # nnU-Net 2.8.1 reports an unknown planner only as "'NoneType' object is not callable".
    if "Could not find requested nnunet trainer" in out or "'NoneType' object is not callable" in out:
        return False
    if "Could not find a dataset with the ID 999" in out:
        return True
    raise AssertionError(f"unexpected output:\n{out[-3000:]}")


def _all_trainer_names() -> list[str]:
    from nnunetv2_mtmd.training import trainers

    return list(trainers.__all__)


@pytest.mark.slow
def test_stock_train_finds_every_shipped_trainer(nnunet_dirs):
    # One subprocess looks every name up the way nnUNetv2_train does (same function, same folder),
    # the console script itself is exercised for the main trainer and a bogus name below.
    code = (
        "import nnunetv2, sys; from os.path import join;"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class as f;"
        "p = join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer');"
        "missing = [n for n in sys.argv[1:] if f(p, n, 'nnunetv2.training.nnUNetTrainer') is None];"
        "print('MISSING', missing)"
    )
    names = _all_trainer_names()
    assert set(TRAINERS) <= set(names)
    proc = _run([sys.executable, "-c", code, *names], nnunet_dirs["env"])
    assert "MISSING []" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("trainer,expected", [("nnUNetTrainerMTMD", True), ("nnUNetTrainerMTMD_NoSuchScheme", False)])
def test_nnunetv2_train_console_script_lookup(nnunet_dirs, trainer, expected):
    proc = _run([venv_bin("nnUNetv2_train"), "999", "2d", "0", "-tr", trainer, "-device", "cpu"], nnunet_dirs["env"])
    assert _found_class(proc) is expected


@pytest.mark.slow
@pytest.mark.parametrize("planner,expected", [("nnUNetPlannerMTMD", True), ("nnUNetPlannerMTMDResEncM", True),
                                              ("nnUNetPlannerMTMD_typo", False)])
def test_plan_experiment_console_script_lookup(nnunet_dirs, planner, expected):
    proc = _run([venv_bin("nnUNetv2_plan_experiment"), "-d", "999", "-pl", planner], nnunet_dirs["env"])
    assert _found_class(proc) is expected


@pytest.mark.slow
def test_broken_plugin_does_not_break_stock_lookup(nnunet_dirs, tmp_path):
    # A package named nnunetv2_mtmd that fails to import shadows the real one.
    broken = tmp_path / "shadow" / "nnunetv2_mtmd"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('simulated broken plugin')\n")
    env = dict(nnunet_dirs["env"], PYTHONPATH=str(broken.parent))
    # nnUNetTrainer_5epochs lives in a subpackage and ResEncM in a planner subpackage: nnU-Net
    # imports our top-level shim modules before reaching them.
    train = _run([venv_bin("nnUNetv2_train"), "999", "2d", "0", "-tr", "nnUNetTrainer_5epochs", "-device", "cpu"], env)
    assert _found_class(train) is True
    assert "MTMD trainers unavailable" in train.stderr and "simulated broken plugin" in train.stderr
    plan = _run([venv_bin("nnUNetv2_plan_experiment"), "-d", "999", "-pl", "nnUNetPlannerResEncM"], env)
    assert _found_class(plan) is True
    # ...while our own classes are, correctly, not found.
    ours = _run([venv_bin("nnUNetv2_train"), "999", "2d", "0", "-tr", "nnUNetTrainerMTMD", "-device", "cpu"], env)
    assert _found_class(ours) is False


@pytest.mark.slow
def test_wheel_installs_and_uninstall_removes_shims(tmp_path):
    """Build the wheel, install it (no deps) into a scratch venv, check the shims, uninstall."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, timeout=300)
    wheel = next(wheel_dir.glob("nnunetv2_mtmd-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record = z.read(next(n for n in names if n.endswith("RECORD"))).decode()
    for shim in SHIMS:
        assert shim in names and shim in record  # in RECORD => pip uninstall removes it

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for shim in SHIMS:
        assert (site / shim).is_file()
    assert "nnunetv2_mtmd.training.trainers import" in (site / SHIMS[0]).read_text()
    subprocess.run([*pip, "uninstall", "-y", "nnunetv2-mtmd"], check=True, timeout=300)
    for shim in SHIMS:
        assert not (site / shim).exists()
    assert not (site / "nnunetv2_mtmd").exists()


def test_shim_sources_are_packaged_paths():
    """The pyproject force-include table points at the shim sources that exist in the repo."""
    text = (REPO / "pyproject.toml").read_text()
    for shim in SHIMS:
        assert f'= "{shim}"' in text
    for src in ("trainers_shim.py", "planners_shim.py"):
        assert (Path(REPO) / "nnunetv2_mtmd" / "_registration" / src).is_file()
