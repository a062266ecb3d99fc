"""Shared fixtures: isolated nnU-Net folders per test and small CPU-friendly defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


def venv_bin(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders, exported for this test.

    Returns a dict with keys 'raw', 'preprocessed', 'results' and 'env' (a subprocess environment)."""
    dirs = {k: tmp_path / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for k, p in dirs.items():
        p.mkdir()
        monkeypatch.setenv(f"nnUNet_{k}", str(p))
    env = dict(os.environ)
    env.update({f"nnUNet_{k}": str(p) for k, p in dirs.items()})
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_compile": "f", "OMP_NUM_THREADS": "1"})
    env.pop("nnUNet_extTrainer", None)
    return {**dirs, "env": env}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "realdata" in item.keywords and not REALDATA.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"real data folder {REALDATA} is absent"))


@pytest.fixture(scope="session")
def trained_label_autoencoder(tmp_path_factory):
    """A small label autoencoder trained once per session on synthetic maps (about 35 s of CPU; see
    tests/training/label_autoencoder_helpers.py)."""
    from tests.training.label_autoencoder_helpers import train_small_autoencoder

    return train_small_autoencoder(tmp_path_factory.mktemp("ae"))
