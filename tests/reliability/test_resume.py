"""Crash and resume (issue 7, item 1): real ``nnUNetv2_train`` runs of the full MTMD scheme are
killed (SIGKILL) during the autoencoder phase and during segmentation training, and continued with
``--c``; nothing already trained is lost or silently retrained.

Trainer ``nnUNetTrainerMTMD_resumetest``: an 8-iteration autoencoder phase saving its progress
every 2 iterations (in the fold's label-autoencoder cache folder,
``$nnUNet_results/<Dataset>/mtmd_label_autoencoders/<plans>__2d/fold_0/multi_domain-<hash>/``), then 3
epochs of 2 iterations with a checkpoint after every epoch.

1. run A is killed as soon as the autoencoder phase has saved progress;
2. run B (``--c``; nnU-Net has no checkpoint yet) resumes the phase at that iteration, finishes it,
   and is killed during segmentation training, after checkpoint_latest.pth was written;
3. run C (``--c``) continues from that checkpoint's epoch to the end without touching the
   autoencoder; the final checkpoint holds every epoch exactly once, the epochs before the kill
   unchanged (run C is killed in nnU-Net's final validation, after checkpoint_final.pth was written:
   that step is nnU-Net's own and only costs test time);
4. loading run B's checkpoint into a fresh trainer (what ``--c`` does) restores optimizer state,
   epoch and the frozen autoencoder exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from nnunetv2_mtmd.training.autoencoder_phase import AE_FILE, AE_PARTIAL_FILE
from nnunetv2_mtmd.training.checkpoint import AE_KEY, load_checkpoint_file
from tests.conftest import venv_bin
from tests.datagen import make_raw_dataset

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerMTMD_resumetest"
DATASET = "Dataset952_Resume"
EPOCHS, AE_ITERATIONS = 3, 8


def _run(args: list[str], env: dict) -> None:
    proc = subprocess.run([venv_bin(args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    dirs = {k: root / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for p in dirs.values():
        p.mkdir()
    env = dict(os.environ, **{f"nnUNet_{k}": str(p) for k, p in dirs.items()}, nnUNet_def_n_proc="1",
               nnUNet_compile="f", OMP_NUM_THREADS="1")
    for k in ("nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        env.pop(k, None)
    for i, (name, labels) in enumerate([("Ankle", ["a", "b"]), ("Knee", ["c"]), ("Hip", ["d"])]):
        make_raw_dataset(dirs["raw"], 901 + i, name, labels, n_cases=3, shape=(4, 32, 32), seed=i)
    _run(["nnUNetv2_mtmd_merge", "-d", "901", "902", "903", "-o", "952", "-n", "Resume"], env)
    _run(["nnUNetv2_plan_and_preprocess", "-d", "952", "-pl", "nnUNetPlannerMTMD", "-c", "2d", "-np", "1"], env)
    fold = dirs["results"] / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    return {"root": root, "fold": fold, "env": dict(env, nnUNet_n_proc_DA="0"), **dirs}


class Run:
    """One ``nnUNetv2_train`` subprocess in its own process group, stdout+stderr to a file."""

    def __init__(self, planned: dict, name: str, cont: bool):
        self.log = planned["root"] / f"run_{name}.log"
        args = [venv_bin("nnUNetv2_train"), "952", "2d", "0", "-tr", TRAINER, "-device", "cpu"] + (["--c"] * cont)
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(args, env=planned["env"], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"training ended (rc {self.proc.returncode}) before the kill point:\n"
                                     f"{self.text()[-4000:]}")
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"kill point not reached in {timeout} s:\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
        self.proc.wait()


def _cache_files(planned: dict, name: str) -> list[Path]:
    """``name`` in the fold's label-autoencoder cache folder(s)."""
    root = planned["results"] / DATASET / "mtmd_label_autoencoders" / "nnUNetPlans__2d" / "fold_0"
    return sorted(root.glob(f"multi_domain-*/{name}"))


def _epochs_started(text: str) -> list[int]:
    return [int(m) for m in re.findall(r": Epoch (\d+)\s*$", text, flags=re.M)]


def test_kill_and_resume_real_training(planned, monkeypatch):
    fold: Path = planned["fold"]

    # --- A: killed during the autoencoder phase
    a = Run(planned, "A", cont=False)
    a.wait_for(lambda: bool(_cache_files(planned, AE_PARTIAL_FILE)))
    a.kill()
    (partial_file,) = _cache_files(planned, AE_PARTIAL_FILE)
    partial = torch.load(partial_file, weights_only=True)
    done_a = partial["iterations_done"]
    assert 2 <= done_a < AE_ITERATIONS and not partial["finished"], a.text()[-2000:]
    assert not _cache_files(planned, AE_FILE) and not (fold / AE_FILE).exists()
    assert not (fold / "checkpoint_latest.pth").exists()

    # --- B: --c without an nnU-Net checkpoint resumes the phase; killed during segmentation training
    b = Run(planned, "B", cont=True)
    b.wait_for(lambda: max(_epochs_started(b.text()), default=-1) >= 1)
    b.kill()
    snapshot = planned["root"] / "checkpoint_after_B.pth"
    shutil.copy(fold / "checkpoint_latest.pth", snapshot)
    text_b = b.text()
    assert f"resuming from {AE_PARTIAL_FILE} at iteration {done_a}/{AE_ITERATIONS}" in text_b
    assert not partial_file.exists() and not (fold / "checkpoint_final.pth").exists()
    finished = torch.load(fold / AE_FILE, weights_only=True)  # the fold's copy of the cached autoencoder
    assert (fold / AE_FILE).read_bytes() == (partial_file.parent / AE_FILE).read_bytes()
    assert json.loads((fold / "label_autoencoder.json").read_text())["cache"] == str(partial_file.parent)
    iters = [h["iteration"] for h in finished["history"]]
    assert iters == list(range(2, AE_ITERATIONS + 1, 2)), iters  # every save point once: nothing redone
    assert finished["history"][: len(partial["history"])] == partial["history"]  # run A's part kept as is
    ckpt_b = load_checkpoint_file(snapshot)
    epoch_b = ckpt_b["current_epoch"]
    assert 1 <= epoch_b < EPOCHS
    assert ckpt_b[AE_KEY]["trained"] is True
    assert len(ckpt_b["logging"]["epoch_start_timestamps"]) == epoch_b

    # --- C: --c continues from the checkpoint to the end; the autoencoder is restored, not retrained
    c = Run(planned, "C", cont=True)
    c.wait_for(lambda: "Training done." in c.text() and (fold / "checkpoint_final.pth").is_file())
    c.kill()
    text_c = c.text()
    assert "MJAP phase 1" not in text_c and "label autoencoder" not in text_c.lower(), text_c[-3000:]
    assert _epochs_started(text_c) == list(range(epoch_b, EPOCHS))
    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS
    log = final["logging"]
    assert len(log["epoch_start_timestamps"]) == EPOCHS and len(log["train_losses"]) == EPOCHS
    assert log["epoch_start_timestamps"][:epoch_b] == ckpt_b["logging"]["epoch_start_timestamps"]
    assert log["lrs"] == pytest.approx([0.01 * (1 - e / EPOCHS) ** 0.9 for e in range(EPOCHS)])  # poly schedule
    assert len(log["seg_loss"]) == EPOCHS and len(log["msc_nonfinite_batches"]) == EPOCHS
    for k, v in finished["state_dict"].items():  # the autoencoder never changed after its phase
        assert torch.equal(final[AE_KEY]["state_dict"][k], v), k
        assert torch.equal(ckpt_b[AE_KEY]["state_dict"][k], v), k

    # --- what --c does with run B's checkpoint, in process: optimizer, epoch, autoencoder restored
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{k}", str(planned[k]))
    from nnunetv2_mtmd.training import trainers

    pre = planned["preprocessed"] / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = True  # what nnUNetv2_train --c adds
    dj = json.loads((pre / "dataset.json").read_text())
    tr = getattr(trainers, TRAINER)(plans, "2d", 0, dj, torch.device("cpu"))
    tr.load_checkpoint(str(snapshot))
    assert tr.current_epoch == epoch_b and tr.autoencoder_trained
    assert all(not p.requires_grad for p in tr.autoencoder.parameters()) and not tr.autoencoder.training
    for k, v in tr.autoencoder.state_dict().items():
        assert torch.equal(v, ckpt_b[AE_KEY]["state_dict"][k]), k
    restored, saved = tr.optimizer.state_dict(), ckpt_b["optimizer_state"]
    assert restored["param_groups"] == saved["param_groups"]
    assert restored["state"].keys() == saved["state"].keys() and saved["state"]
    for i, st in saved["state"].items():
        assert torch.equal(restored["state"][i]["momentum_buffer"], st["momentum_buffer"]), i
