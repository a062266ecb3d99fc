"""The end-to-end demo (the project's main job): synthetic three-joint data -> merge -> plan and
preprocess -> MTMD training on CPU -> stock ``nnUNetv2_predict`` on held-out cases -> per-domain,
per-structure Dice, a markdown report and a PNG of example slices.

Every step runs the real console script in a subprocess, with its own ``nnUNet_raw`` /
``nnUNet_preprocessed`` / ``nnUNet_results`` under the output folder, and the command is printed, so
the demo doubles as a worked example of the workflow. The only changes to what nnU-Net plans are the
batch size (``--batch_size``, default 6 = 2 per domain) and the network width (``--base_features``,
default 16 instead of 32 features in the first stage), set in nnUNetPlans.json after planning so that
CPU training fits the time budget; the report says so.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunetv2_mtmd.apps.progress import Heartbeat, PredictionProgress, TrainingProgress
from nnunetv2_mtmd.apps.workspace import nnunet_env, run_logged
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.training.trainers.base import PLANS_SEED_KEY

logger = logging.getLogger(__name__)

DOMAIN_NAMES = ("ankle", "knee", "shoulder")
SOURCE_IDS = (911, 912, 913)
MERGED_ID = 960
MERGED_NAME = "SynthJoints"
DEFAULT_TRAINER = "nnUNetTrainerMTMD_demo"
#: First-stage features of the demo network (nnU-Net plans 32): half the width, a quarter of the
#: compute, so that the demo trains 4x more iterations in its CPU budget.
DEFAULT_BASE_FEATURES = 16


@dataclass
class DemoResult:
    out: Path
    summary: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def say(text: str, gap: bool = False, tag: bool = True) -> None:
    """One line of the demo's console output, its user interface (not logging: the demo is read as a
    walkthrough, so its lines go to stdout unformatted, flushed before each long subprocess step).
    ``gap``: an empty line first; ``tag``: the ``[demo]`` prefix."""
    print(("\n" if gap else "") + ("[demo] " if tag else "") + text, flush=True)


class Runner:
    """Runs console scripts with the demo's nnU-Net folders, logging each command and its duration."""

    def __init__(self, out: Path, log_file: Path, n_proc_da: int):
        self.env = nnunet_env(out, create=True)
        # nnU-Net's defaults for a 2-core CPU machine, unless the user set them
        self.env.setdefault("nnUNet_def_n_proc", "2")
        self.env.setdefault("nnUNet_compile", "f")
        self.log_file = log_file
        self.n_proc_da = n_proc_da
        self.seconds: dict[str, float] = {}

    def __call__(self, step: str, args: list[str], train: bool = False, progress: Any = None) -> None:
        """Run one step. ``progress``: a parser of the step's output (:mod:`~nnunetv2_mtmd.apps.progress`)
        whose lines are shown live; default a :class:`~nnunetv2_mtmd.apps.progress.Heartbeat`. The full
        output goes to the log file only."""
        env = dict(self.env)
        if train:
            # for training only: nnU-Net's planning crashes with nnUNet_n_proc_DA=0 (nnunet_env removes it)
            env["nnUNet_n_proc_DA"] = str(self.n_proc_da)
        say(f"{step}: {shlex.join(args)}", gap=True)
        parser = progress if progress is not None else Heartbeat()

        def show(line: str) -> None:
            if (msg := parser.feed(line)) is not None:
                say(f"  {msg}")

        self.seconds[step] = run_logged(args, self.log_file, env, what=f"demo step '{step}'", on_line=show)
        say(f"  done in {self.seconds[step]:.0f} s")


def _check_arguments(batch_size: int, base_features: int | None) -> None:
    if batch_size < 3 or batch_size % 3:
        raise InputDataError(f"--batch_size must be a positive multiple of the 3 domains, found {batch_size}.")
    if base_features is not None and base_features < 1:
        raise InputDataError(f"--base_features must be >= 1, found {base_features}.")


def run_demo(out: Path, cases: int = 10, test_cases: int = 4, seed: int = 0, trainer: str = DEFAULT_TRAINER,
             batch_size: int = 6, n_proc_da: int = 0, overwrite: bool = False,
             base_features: int | None = DEFAULT_BASE_FEATURES) -> DemoResult:
    """Run the whole demo into ``out`` and return the evaluation summary."""
    from nnunetv2_mtmd.conversion.synthetic import write_synthetic_datasets

    out = Path(out).resolve()
    _check_arguments(batch_size, base_features)
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"Demo output folder {out} exists. Pass --overwrite or choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    run = Runner(out, out / "demo_log.txt", n_proc_da)

    t0 = time.time()
    say(f"writing synthetic ankle/knee/shoulder data ({cases} training + {test_cases} test cases each)")
    sources = write_synthetic_datasets(out / "sources", cases=cases, test_cases=test_cases, seed=seed)
    run.seconds["synthetic data"] = time.time() - t0

    run("merge", ["nnUNetv2_mtmd_merge", "-d", *[str(s) for s in sources], "--domains", *DOMAIN_NAMES,
                  "-o", str(MERGED_ID), "-n", MERGED_NAME])
    # No --verify_dataset_integrity (21 s of the 15-minute budget): the synthetic sources and the merged
    # dataset pass nnU-Net's verification in tests/conversion (test_synthetic.py, test_merge.py).
    run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(MERGED_ID), "-pl", "nnUNetPlannerMTMD",
                                "-c", "2d", "-np", "2"])
    plans_file = out / "nnUNet_preprocessed" / f"Dataset{MERGED_ID}_{MERGED_NAME}" / "nnUNetPlans.json"
    planned_bs, planned_f, features = set_cpu_plans(plans_file, batch_size, base_features, seed)
    say(f"batch size {planned_bs} (planned) -> {batch_size} ({batch_size // 3} per domain), features per "
        f"stage {planned_f} (planned) -> {features}, for CPU; training seed {seed} (plans '{PLANS_SEED_KEY}': "
        "initialisation, sampling and in-process augmentation)")
    merged = out / "nnUNet_raw" / f"Dataset{MERGED_ID}_{MERGED_NAME}"
    say(f"training log: {out / 'demo_log.txt'} (all of nnU-Net's output); one line per epoch here")
    run("train", ["nnUNetv2_train", str(MERGED_ID), "2d", "all", "-tr", trainer, "-device", "cpu"], train=True,
        progress=TrainingProgress(trainer_epochs(trainer), domain_labels(merged / "dataset.json")))

    inputs = _prepare_inputs(run, out, sources)
    pred = out / "predictions"
    n_cases = len({p.name.rsplit("_", 1)[0] for p in inputs.glob("*.nii.gz")})
    run("predict", ["nnUNetv2_predict", "-i", str(inputs), "-o", str(pred), "-d", str(MERGED_ID), "-c", "2d",
                    "-tr", trainer, "-f", "all", "-device", "cpu", "-npp", "1", "-nps", "1"],
        progress=PredictionProgress(n_cases))
    run("evaluate", ["nnUNetv2_mtmd_evaluate", "-ref", str(merged / "labelsTs"), "-pred", str(pred),
                     "-d", str(MERGED_ID), "-o", str(out / "evaluation"), "-np", "1"])
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    run.seconds["total"] = time.time() - t0
    dice = dice_table(out / "evaluation" / "metrics.csv")
    example_png = out / "examples.png"
    plot_examples(inputs, pred, merged / "labelsTs", example_png)
    write_report(out, dice, run.seconds, trainer, planned_bs, batch_size, cases, test_cases, planned_f, features)
    say(format_dice_table(dice), gap=True, tag=False)
    say(f"report: {out / 'report.md'}  examples: {example_png}  total {run.seconds['total'] / 60:.1f} min", gap=True)
    return DemoResult(out, summary, run.seconds)


def trainer_epochs(trainer: str) -> int | None:
    """Number of epochs of one of the plugin's schedule trainers (``schedule_epochs``); None for any other
    trainer (the progress lines then show no time left)."""
    from nnunetv2_mtmd.training import trainers

    return getattr(getattr(trainers, trainer, None), "schedule_epochs", None)


def domain_labels(dataset_json: Path) -> dict[str, list[int]]:
    """``{domain: [unified label ids]}`` of a merged dataset, to show the pseudo-Dice per domain."""
    from nnunetv2_mtmd.domains import load_domain_spec

    spec = load_domain_spec(dataset_json)
    return {d.name: list(d.unified_ids) for d in spec.domains}


def _prepare_inputs(run: Runner, out: Path, sources: list[Path]) -> Path:
    """New cases arrive as ordinary single-domain images: add the code channel per domain
    (``nnUNetv2_mtmd_prepare_input``), all into one input folder for ``nnUNetv2_predict``."""
    inputs = out / "predict_input"
    inputs.mkdir()
    for dom, src in zip(DOMAIN_NAMES, sources):
        tmp = out / f"predict_input_{dom}"
        run(f"prepare input ({dom})", ["nnUNetv2_mtmd_prepare_input", "-i", str(src / "imagesTs"), "-o", str(tmp),
                                       "-d", str(MERGED_ID), "--domain", dom, "--prefix"])
        for f in tmp.iterdir():
            shutil.move(str(f), inputs / f.name)
        tmp.rmdir()
    return inputs


def set_cpu_plans(plans_file: Path, batch_size: int, base_features: int | None = None,
                  seed: int | None = None) -> tuple[int, list, list]:
    """Set the 2d batch size (and, with ``base_features``, the network width: ``base * 2**stage``,
    capped at the planned maximum; with ``seed``, the training seed the MTMD trainers read,
    ``mtmd_training_seed``) in a plans file. Returns the planned batch size and the planned and new
    features per stage."""
    plans = json.loads(plans_file.read_text())
    if seed is not None:
        plans[PLANS_SEED_KEY] = int(seed)
    conf = plans["configurations"]["2d"]
    planned = conf["batch_size"]
    conf["batch_size"] = int(batch_size)
    ak = conf["architecture"]["arch_kwargs"]
    planned_features = list(ak["features_per_stage"])
    if base_features is not None:
        cap = max(planned_features)
        ak["features_per_stage"] = [min(cap, int(base_features) * 2 ** i) for i in range(len(planned_features))]
    plans_file.write_text(json.dumps(plans, indent=2))
    return planned, planned_features, list(ak["features_per_stage"])


def _label_cmap(max_label: int) -> Any:
    """Colormap with index i = unified label i; colours are vivid and repeat only after 12 labels."""
    from matplotlib.colors import ListedColormap

    vivid = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
             "#bfef45", "#fabed4", "#469990", "#dcbeff"]
    return ListedColormap(["#000000"] + [vivid[i % len(vivid)] for i in range(max_label)])


def dice_table(metrics_csv: Path) -> dict[str, dict[str, list[float]]]:
    """``{domain: {structure: [dice per case]}}`` from evaluate's metrics.csv; undefined Dice values
    (structure absent from reference and prediction: empty or NaN) are left out."""
    import csv

    out: dict[str, dict[str, list[float]]] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            vals = out.setdefault(row["domain"], {}).setdefault(row["structure"], [])
            text = (row.get("dice") or "").strip()
            if text and text.lower() != "nan":
                vals.append(float(text))
    return {d: {s: v for s, v in structs.items() if v} for d, structs in out.items()}


def format_dice_table(dice: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table of :func:`dice_table`: mean ± std per structure, mean per domain, mean of domains."""
    lines = ["| domain | structure | Dice (mean ± std over held-out cases) |", "|---|---|---|"]
    all_means = []
    for dom, structs in dice.items():
        dom_vals = []
        for s, vals in structs.items():
            lines.append(f"| {dom} | {s} | {np.mean(vals):.3f} ± {np.std(vals):.3f} |")
            dom_vals += vals
        lines.append(f"| {dom} | **mean** | **{np.mean(dom_vals):.3f}** |")
        all_means.append(np.mean(dom_vals))
    lines.append(f"| all | **mean of domains** | **{np.mean(all_means):.3f}** |")
    return "\n".join(lines)


def plot_examples(inputs: Path, pred: Path, ref: Path, path: Path) -> None:
    """One row per domain: image, ground truth and prediction of the middle foreground slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(p.name[: -len(".nii.gz")] for p in ref.glob("*.nii.gz"))
    chosen = {}
    for c in cases:
        chosen.setdefault(c.split("_", 1)[0], c)
    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for row, (dom, case) in enumerate(chosen.items()):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz")))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / f"{case}.nii.gz")))
        pr = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{case}.nii.gz")))
        zs = np.where(gt.reshape(gt.shape[0], -1).any(1))[0]
        z = int(zs[len(zs) // 2]) if len(zs) else gt.shape[0] // 2
        # One vivid colour per unified label: tab10's grey and olive vanish on a grey MR image.
        cmap = _label_cmap(max(int(gt.max()), int(pr.max()), 1))
        for col, (title, lab) in enumerate((("image", None), ("ground truth", gt), ("prediction", pr))):
            ax = axes[row, col]
            ax.imshow(img[z], cmap="gray")
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab[z], 0), cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.55,
                          interpolation="nearest")
            ax.set_title(f"{dom} {case.split('_', 1)[1]}: {title}" if col == 0 else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, dice: dict[str, dict[str, list[float]]], seconds: dict[str, float], trainer: str,
                 planned_bs: int, batch_size: int, cases: int, test_cases: int,
                 planned_features: list[int] | None = None, features: list[int] | None = None) -> None:
    """``out/report.md``: what was run, the Dice table and the time per step."""
    steps = "\n".join(f"| {k} | {v:.0f} |" for k, v in seconds.items())
    text = f"""# nnunetv2-mtmd demo report

Synthetic three-joint data (ankle: calcaneus, talus, tibia; knee: femur, fibula, patella, tibia;
shoulder: humerus, scapula), {cases} training and {test_cases} held-out test cases per domain. One 2D
multi-domain nnU-Net (`{trainer}`: shared convolutions, domain-specific batch norm, one head per
domain, multi-scale contrastive regularization and multi-joint anatomical priors) trained on all three
domains on CPU, then stock `nnUNetv2_predict` on the held-out cases.

Batch size: planned {planned_bs}, set to {batch_size} ({batch_size // 3} per domain); features per
stage: planned {planned_features}, set to {features}; both so that CPU training fits the demo's time
budget. Everything else is as nnU-Net and `nnUNetPlannerMTMD` planned it.

## Dice on the held-out test cases (3D, per structure)

{format_dice_table(dice)}

All metrics (sensitivity, specificity, surface distances, RAVD): `evaluation/summary.md`,
`evaluation/metrics.csv`. Example slices: `examples.png`. Training log and progress plots:
`nnUNet_results/Dataset{MERGED_ID}_{MERGED_NAME}/{trainer}__nnUNetPlans__2d/fold_all/`.

## Time per step (seconds)

| step | seconds |
|---|---|
{steps}

Commands run: see `demo_log.txt`.
"""
    (out / "report.md").write_text(text)
