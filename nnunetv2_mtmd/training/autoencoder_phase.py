"""First training phase of the MJAP scheme: fit the multi-joint label autoencoder on ground-truth
label maps, then freeze it (Boutillon et al. 2022, section 2.3).

This module is the training loop over a stream of batches (``{"target": (B, 1, X, Y), "domain":
(B,)}``) and its crash safety. What the batches are (label crops of the fold's preprocessed training
segmentations, :mod:`nnunetv2_mtmd.training.autoencoder_data`) and where the files live (a cache
shared by every MJAP scheme of a fold, :mod:`nnunetv2_mtmd.training.autoencoder_cache`) are decided
by the caller.

Loss: :func:`nnunetv2_mtmd.training.autoencoder_loss.autoencoder_training_loss` (CE + soft Dice +
lambda1 * MSC on all scales). Optimizer: Adam (betas (0.9, 0.999), no weight decay), learning rate
1e-2 with a linear warm-up over ``warmup`` iterations (50) and nnU-Net's poly decay (exponent 0.9)
to 0 at the last iteration, gradients clipped to norm 12 (as nnU-Net does); the learning rate is a
function of the iteration only, so a resumed run follows the same schedule. Why: an autoencoder
without skips first predicts background everywhere and then learns the structures one after the
other; measured on the study data (docs/method.md, "Label autoencoder") the usual 1e-3 (and so
the paper's 1e-4) leaves it on the all-background solution for most of a CPU-sized phase (validation
Dice 0.01 after 500 iterations at 1e-3; after 1000 iterations 0.32 at 3e-3 and 0.72 at 1e-2), while
the warm-up keeps Adam's first steps, taken with unsettled batch statistics, from overshooting.

Crash safety (files in ``folder``, all written atomically: temporary file + ``os.replace``, all read
with ``torch.load(..., weights_only=True)``):

- ``label_autoencoder_partial.pth``: weights, optimizer state, iterations done, history and training
  seconds, saved every ``save_every`` iterations. A killed run started again resumes from it.
- ``label_autoencoder.pth``: the finished, frozen autoencoder; reused instead of training again.

Both files record a fingerprint of what the autoencoder was trained on (its configuration, the
training cases, the loss and optimizer settings, and whatever the caller adds); a file whose
fingerprint differs from the current run's is ignored, with a warning, and the phase starts afresh.
Every reuse or resume is logged.

Distributed training (DDP): every rank trains the same autoencoder: ranks start from rank 0's
weights, average their gradients every step, DSBN statistics are all-reduced, the final state is
broadcast from rank 0, and only rank 0 writes files (see :mod:`nnunetv2_mtmd.training.ddp`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nnunetv2_mtmd.architectures.label_autoencoder import (
    LabelAutoencoder,
    freeze,
    labels_to_onehot,
    reconstruction_dice,
)
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_file
from nnunetv2_mtmd.training.autoencoder_loss import autoencoder_training_loss

AE_FILE = "label_autoencoder.pth"
AE_PARTIAL_FILE = "label_autoencoder_partial.pth"

#: Defaults of the optimizer and loss (see the module docstring).
DEFAULT_LR = 1e-2
GRAD_CLIP = 12.0
DEFAULT_WARMUP = 50


@dataclass
class AutoencoderPhaseState:
    """What a resumed run needs: weights, optimizer, iterations done, the logged history and the
    training seconds spent so far (summed over interrupted runs; ``resumed_seconds``: those of the
    runs before this process, not saved)."""

    iterations_done: int = 0
    finished: bool = False
    history: list[dict] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None
    seconds: float = 0.0
    resumed_seconds: float = 0.0


def batch_to_ae_input(batch: dict, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unified one-hot ``(B, C, X, Y)`` and domain indices ``(B,)`` from an nnU-Net-style batch."""
    target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
    target = target.to(device, non_blocking=True).long().clamp_min(0)
    return labels_to_onehot(target, num_classes), batch["domain"].to(device)


def phase_fingerprint(ae: LabelAutoencoder, train_cases: list[str] | None, lambda1: float, temperature: float,
                      lr: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the autoencoder phase depends on; files with another fingerprint are not resumed.
    ``extra``: the caller's part (data, augmentation, schedule), stored under ``"job"``."""
    fp = {"config": ae.get_config(), "train_cases": sorted(train_cases) if train_cases is not None else None,
          "lambda1": float(lambda1), "temperature": float(temperature), "lr": float(lr)}
    if extra is not None:
        fp["job"] = extra
    return fp


def save_state(path: Path, ae: LabelAutoencoder, opt: torch.optim.Optimizer | None, st: AutoencoderPhaseState) -> None:
    """Write the phase state atomically (temporary file, then ``os.replace``)."""
    with atomic_file(path) as tmp:
        torch.save({"config": ae.get_config(), "state_dict": ae.state_dict(),
                    "optimizer": opt.state_dict() if opt is not None else None,
                    "iterations_done": st.iterations_done, "finished": st.finished, "history": st.history,
                    "fingerprint": st.fingerprint, "seconds": float(st.seconds)}, tmp)


def read_state_file(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a phase file with ``weights_only=True``; an unreadable file raises a clear error."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated file, foreign pickle (refused by weights_only), ...
        raise InputDataError(
            f"Cannot read the label autoencoder file {path}: {type(e).__name__}: {_first_line(e)}. "
            "Delete it to train the autoencoder again."
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise InputDataError(f"{path} is not a label autoencoder file (no 'state_dict'). Delete it to retrain.")
    return ckpt


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else "(no message)"


def load_state(path: Path, ae: LabelAutoencoder, opt: torch.optim.Optimizer | None,
               device: torch.device) -> AutoencoderPhaseState:
    """Restore weights (and optimizer) from a phase file written by :func:`save_state`."""
    ckpt = read_state_file(path, device)
    ae.load_state_dict(ckpt["state_dict"])
    if opt is not None and ckpt.get("optimizer"):
        opt.load_state_dict(ckpt["optimizer"])
    return AutoencoderPhaseState(int(ckpt.get("iterations_done", 0)), bool(ckpt.get("finished", False)),
                                 list(ckpt.get("history", [])), ckpt.get("fingerprint"),
                                 float(ckpt.get("seconds", 0.0)))


def _matching(path: Path, fingerprint: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Whether the phase file at ``path`` exists and was made for this run (else it is ignored)."""
    if not path.is_file():
        return False
    stored = read_state_file(path).get("fingerprint")
    if stored is None or stored == fingerprint:
        return True  # files from before fingerprints existed are trusted (same folder)
    diff = sorted(k for k in set(fingerprint) | set(stored) if stored.get(k) != fingerprint.get(k))
    log(f"WARNING: ignoring {path.name}: it was made for another setup (differs in {', '.join(diff)}); "
        "the autoencoder phase starts afresh.")
    return False


def load_finished(final: Path, fingerprint: dict, iterations: int, ae: LabelAutoencoder, device: torch.device,
                  log: Callable[[str], None]) -> AutoencoderPhaseState | None:
    """The state of a finished autoencoder of this run in ``final`` (loaded into ``ae`` and frozen), or
    None when there is none, it was made for another setup or it ran another number of iterations."""
    if not _matching(final, fingerprint, log):
        return None
    done = read_state_file(final)
    if bool(done.get("finished")) and int(done.get("iterations_done", -1)) == iterations:
        st = load_state(final, ae, None, device)
        freeze(ae)
        log(f"MJAP autoencoder: reusing the finished autoencoder {final} ({st.iterations_done} iterations); "
            "delete it to train it again.")
        return st
    log(f"WARNING: {final.name} holds {done.get('iterations_done')} iterations, this run asks for "
        f"{iterations}: training the autoencoder again.")
    return None


def learning_rate(it: int, iterations: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then nnU-Net's poly decay ``(1 - it / iterations) ** 0.9``."""
    ramp = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
    return lr * ramp * (1 - it / iterations) ** 0.9


def _run_steps(ae: LabelAutoencoder, opt: torch.optim.Optimizer, st: AutoencoderPhaseState,
               train_batches: Iterator[dict], val_batches: Iterator[dict], iterations: int, device: torch.device,
               partial: Path, log: Callable[[str], None], *, lambda1: float, temperature: float, lr: float,
               warmup: int, dice_weight: float, save_every: int, val_batches_per_check: int, distributed: bool,
               is_main: bool) -> None:
    """The training iterations from ``st.iterations_done`` to ``iterations``; every ``save_every``
    iterations (and at the end) a validation entry in ``st.history`` and the partial file."""
    from nnunetv2_mtmd.training.ddp import average_gradients

    bar = tqdm(range(st.iterations_done, iterations), desc="label autoencoder", disable=None if is_main else True)
    sums = {"ce": 0.0, "dice": 0.0, "msc": 0.0}
    n = 0
    start = time.perf_counter()
    for it in bar:
        onehot, dom = batch_to_ae_input(next(train_batches), ae.num_classes, device)
        for g in opt.param_groups:  # a function of the iteration, so resume-safe
            g["lr"] = learning_rate(it, iterations, lr, warmup)
        opt.zero_grad(set_to_none=True)
        total, terms = autoencoder_training_loss(ae, onehot, dom, lambda1=lambda1, temperature=temperature,
                                                 dice_weight=dice_weight)
        total.backward()
        if distributed:
            average_gradients(ae)
        torch.nn.utils.clip_grad_norm_(ae.parameters(), GRAD_CLIP)
        opt.step()
        for k in sums:
            sums[k] += float(terms[k])
        n += 1
        st.iterations_done = it + 1
        if is_main and (it % 10 == 0 or it + 1 == iterations):
            bar.set_postfix(ce=f"{terms['ce']:.3f}", dice=f"{terms['dice']:.3f}")
        if st.iterations_done % save_every == 0 or st.iterations_done == iterations:
            val = validate_autoencoder(ae, val_batches, val_batches_per_check, device)
            entry = {"iteration": st.iterations_done, **{k: v / n for k, v in sums.items()}, "val_dice": val}
            st.history.append(entry)
            log(f"MJAP autoencoder it {st.iterations_done}/{iterations}: CE {entry['ce']:.4f} "
                f"soft Dice {entry['dice']:.4f} MSC {entry['msc']:.4f} validation reconstruction Dice {val:.4f}")
            sums = dict.fromkeys(sums, 0.0)
            n = 0
            now = time.perf_counter()
            st.seconds += now - start
            start = now
            if is_main:
                save_state(partial, ae, opt, st)
            ae.train()


def train_autoencoder(
    ae: LabelAutoencoder,
    train_batches: Iterator[dict],
    val_batches: Iterator[dict],
    iterations: int,
    device: torch.device,
    folder: Path,
    log: Callable[[str], None],
    lambda1: float = 0.05,
    temperature: float = 0.1,
    lr: float = DEFAULT_LR,
    save_every: int = 50,
    val_batches_per_check: int = 4,
    train_cases: list[str] | None = None,
    distributed: bool | None = None,
    warmup: int = DEFAULT_WARMUP,
    dice_weight: float = 1.0,
    extra_fingerprint: dict[str, Any] | None = None,
) -> AutoencoderPhaseState:
    """Train ``ae`` for ``iterations`` steps, then freeze it; resumable (see the module docstring).

    Args:
        train_batches / val_batches: endless streams of ``{"target": (B, 1, X, Y), "domain": (B,)}``
            (the validation stream only feeds the logged ``val_dice``).
        train_cases: identifiers of the training split (part of the fingerprint that decides
            whether a file in ``folder`` belongs to this run); None skips that part.
        distributed: train one autoencoder over all ranks (default: whenever torch.distributed is
            initialised with more than one process).
        warmup, dice_weight: linear warm-up iterations of the learning rate; weight of the soft-Dice term.
        extra_fingerprint: more of what the run depends on (stored in the files' fingerprint).

    Returns the final state; the history holds ``{"iteration", "ce", "dice", "msc", "val_dice"}`` entries."""
    from nnunetv2_mtmd.training.ddp import broadcast_module_state, dist_active

    folder = Path(folder)
    distributed = dist_active() if distributed is None else bool(distributed and dist_active())
    is_main = not distributed or torch.distributed.get_rank() == 0
    fingerprint = phase_fingerprint(ae, train_cases, lambda1, temperature, lr, extra_fingerprint)
    final, partial = folder / AE_FILE, folder / AE_PARTIAL_FILE

    reused = load_finished(final, fingerprint, iterations, ae, device, log)
    if reused is not None:
        return reused

    for p in ae.parameters():  # AnatomicalPriorLoss froze it at construction; this phase trains it
        p.requires_grad_(True)
    if distributed:
        from nnunetv2_mtmd.architectures.dsbn import set_dsbn_sync

        set_dsbn_sync(ae, True)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    st = AutoencoderPhaseState(fingerprint=fingerprint)
    if _matching(partial, fingerprint, log):
        st = load_state(partial, ae, opt, device)
        st.fingerprint, st.resumed_seconds = fingerprint, st.seconds
        log(f"MJAP autoencoder: resuming from {partial.name} at iteration {st.iterations_done}/{iterations}")
    if distributed:
        broadcast_module_state(ae)
    ae.train()
    _run_steps(ae, opt, st, train_batches, val_batches, iterations, device, partial, log, lambda1=lambda1,
               temperature=temperature, lr=lr, warmup=warmup, dice_weight=dice_weight, save_every=save_every,
               val_batches_per_check=val_batches_per_check, distributed=distributed, is_main=is_main)
    st.finished = True
    if distributed:
        broadcast_module_state(ae)
    freeze(ae)
    if is_main:
        save_state(final, ae, None, st)
        if partial.is_file():
            partial.unlink()
    if distributed:
        torch.distributed.barrier()
    return st


@torch.no_grad()
def validate_autoencoder(ae: LabelAutoencoder, batches: Iterator[dict], n_batches: int, device: torch.device) -> float:
    """Mean foreground reconstruction Dice over ``n_batches`` validation batches (eval mode)."""
    was_training = ae.training
    ae.eval()
    vals = []
    for _ in range(n_batches):
        onehot, dom = batch_to_ae_input(next(batches), ae.num_classes, device)
        v = reconstruction_dice(ae, onehot, dom)
        if v == v:  # NaN: no structure in input nor reconstruction of this batch
            vals.append(v)
    ae.train(was_training)
    return float(sum(vals) / len(vals)) if vals else float("nan")
