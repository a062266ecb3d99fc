"""Inference timings: the real ``nnUNetv2_predict`` console script in a subprocess, and the same
prediction with nnU-Net's predictor in this process (without interpreter start-up and imports)."""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.benchmark.environment import quiet
from nnunetv2_mtmd.apps.benchmark.settings import CONFIGURATION
from nnunetv2_mtmd.apps.benchmark.timing import sync
from nnunetv2_mtmd.apps.workspace import console_script, nnunet_env
from nnunetv2_mtmd.inference.predictor import load_predictor  # noqa: F401  (the one predictor entry)


def save_inference_model(trainer: Any, plans: dict[str, Any], dataset_json: dict[str, Any],
                         log_path: Path | None = None) -> Path:
    """Write ``trainer``'s network as an nnU-Net result folder (``plans.json``, ``dataset.json``,
    ``fold_0/checkpoint_final.pth`` via the trainer's own ``save_checkpoint``); return the model folder."""
    from nnunetv2_mtmd.io import save_json

    with quiet(log_path):
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the TTA mirror axes
    out = Path(trainer.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(out / "checkpoint_final.pth"))
    model_folder = out.parent
    save_json(plans, model_folder / "plans.json")
    save_json(dataset_json, model_folder / "dataset.json")
    return model_folder


def predict_command(dataset_name: str, trainer_name: str, plans_name: str, input_folder: Path,
                    output_folder: Path, device: str, disable_tta: bool) -> list[str]:
    """The ``nnUNetv2_predict`` command line used for both models (sequential mode: ``-npp 0 -nps 0``)."""
    cmd = [console_script("nnUNetv2_predict"), "-i", str(input_folder), "-o", str(output_folder),
           "-d", dataset_name, "-tr", trainer_name, "-p", plans_name, "-c", CONFIGURATION, "-f", "0",
           "-chk", "checkpoint_final.pth", "-device", device, "--disable_progress_bar", "-npp", "0", "-nps", "0"]
    return cmd + (["--disable_tta"] if disable_tta else [])


def predict_env(workdir: Path, device: str) -> dict[str, str]:
    """Environment of the ``nnUNetv2_predict`` subprocesses: this process's, with the nnU-Net folders of
    ``workdir`` and ``nnUNet_compile=f`` (as for the trainers)."""
    env = nnunet_env(workdir)
    env["nnUNet_compile"] = "f"
    # nnU-Net searches nnUNet_extTrainer for trainer classes too: a user's folder must not change which
    # class the -tr names resolve to
    env.pop("nnUNet_extTrainer", None)
    if device == "cpu":
        # nnUNetv2_predict uses every core; idle OpenMP threads must not spin on a shared machine
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (``getrusage``); its increase
    over one :func:`timed_predict` is the CPU time of that run's subprocess."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_predict(cmd: list[str], output_folder: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds of one ``nnUNetv2_predict`` run (fresh output folder): ``{"wall": elapsed, "cpu": user +
    system CPU time of the subprocess}`` (interpreter start and imports included); raises on failure.

    Its own ``subprocess.run`` rather than :func:`~nnunetv2_mtmd.apps.workspace.run_logged`: the output
    is captured (only its tail matters, in the error) and the CPU time is read around this one call."""
    if output_folder.exists():
        shutil.rmtree(output_folder)
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = {"wall": time.perf_counter() - t0, "cpu": _children_cpu() - c0}
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"nnUNetv2_predict failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return dt


def timed_predict_in_process(predictor: Any, input_folder: Path, output_folder: Path, device: str,
                             log_path: Path | None = None) -> dict[str, float]:
    """Seconds of ``predictor.predict_from_files_sequential`` (read, preprocess, sliding-window
    prediction, export) in this process: ``{"wall", "cpu"}``. Excludes interpreter start and imports."""
    if output_folder.exists():
        shutil.rmtree(output_folder)
    output_folder.mkdir(parents=True)
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    with quiet(log_path):
        predictor.predict_from_files_sequential(str(input_folder), str(output_folder), save_probabilities=False,
                                                overwrite=True, folder_with_segs_from_prev_stage=None)
    sync(device)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
