"""First training phase of the MJAP scheme: fit the multi-joint label autoencoder on ground-truth
masks of the training split, then freeze it (Boutillon et al. 2022, section 2.3).

It runs inside ``nnUNetv2_train`` before the segmentation network's first epoch, on the targets of
nnU-Net's own (domain-balanced, augmented) training batches. Progress is saved every
``save_every`` iterations to ``label_autoencoder_partial.pth`` in the fold folder, so a killed run
continued with ``--c`` resumes the phase instead of restarting it; the finished autoencoder is saved
as ``label_autoencoder.pth`` (loadable with ``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nnunetv2_mtmd.losses.anatomical_prior import (
    LabelAutoencoder,
    autoencoder_loss,
    labels_to_onehot,
    reconstruction_dice,
)

AE_FILE = "label_autoencoder.pth"
AE_PARTIAL_FILE = "label_autoencoder_partial.pth"


@dataclass
class AutoencoderPhaseState:
    """What a resumed run needs: weights, optimizer, iterations done, and the logged history."""

    iterations_done: int = 0
    finished: bool = False
    history: list[dict] = field(default_factory=list)


def batch_to_ae_input(batch: dict, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unified one-hot ``(B, C, X, Y)`` and domain indices ``(B,)`` from an nnU-Net batch."""
    target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
    target = target.to(device, non_blocking=True).long().clamp_min(0)
    return labels_to_onehot(target, num_classes), batch["domain"].to(device)


def save_state(path: Path, ae: LabelAutoencoder, opt: torch.optim.Optimizer | None, st: AutoencoderPhaseState) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save({"config": ae.get_config(), "state_dict": ae.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "iterations_done": st.iterations_done, "finished": st.finished, "history": st.history}, tmp)
    os.replace(tmp, path)


def load_state(path: Path, ae: LabelAutoencoder, opt: torch.optim.Optimizer | None,
               device: torch.device) -> AutoencoderPhaseState:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    ae.load_state_dict(ckpt["state_dict"])
    if opt is not None and ckpt.get("optimizer"):
        opt.load_state_dict(ckpt["optimizer"])
    return AutoencoderPhaseState(int(ckpt["iterations_done"]), bool(ckpt["finished"]), list(ckpt["history"]))


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
    lr: float = 1e-3,
    save_every: int = 50,
    val_batches_per_check: int = 4,
) -> AutoencoderPhaseState:
    """Train ``ae`` for ``iterations`` steps (resuming from ``folder/AE_PARTIAL_FILE``), then freeze it.

    Returns the final state; the history holds ``{"iteration", "ce", "msc", "val_dice"}`` entries."""
    folder = Path(folder)
    for p in ae.parameters():  # AnatomicalPriorLoss froze it at construction; this phase trains it
        p.requires_grad_(True)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    partial = folder / AE_PARTIAL_FILE
    st = load_state(partial, ae, opt, device) if partial.is_file() else AutoencoderPhaseState()
    if st.iterations_done:
        log(f"MJAP autoencoder: resuming at iteration {st.iterations_done}/{iterations}")
    ae.train()
    bar = tqdm(range(st.iterations_done, iterations), desc="label autoencoder", disable=None)
    ce_sum = msc_sum = 0.0
    n = 0
    for it in bar:
        onehot, dom = batch_to_ae_input(next(train_batches), ae.num_classes, device)
        opt.zero_grad(set_to_none=True)
        total, ce, msc = autoencoder_loss(ae, onehot, dom, lambda1=lambda1, temperature=temperature)
        total.backward()
        opt.step()
        ce_sum, msc_sum, n = ce_sum + float(ce.detach()), msc_sum + float(msc.detach()), n + 1
        st.iterations_done = it + 1
        if st.iterations_done % save_every == 0 or st.iterations_done == iterations:
            val = validate_autoencoder(ae, val_batches, val_batches_per_check, device)
            entry = {"iteration": st.iterations_done, "ce": ce_sum / n, "msc": msc_sum / n, "val_dice": val}
            st.history.append(entry)
            log(f"MJAP autoencoder it {st.iterations_done}/{iterations}: CE {entry['ce']:.4f} "
                f"MSC {entry['msc']:.4f} validation reconstruction Dice {val:.4f}")
            ce_sum = msc_sum = 0.0
            n = 0
            save_state(partial, ae, opt, st)
            ae.train()
    st.finished = True
    ae.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    save_state(folder / AE_FILE, ae, None, st)
    if partial.is_file():
        partial.unlink()
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
