"""A small MJAP label autoencoder trained on synthetic label maps, shared by the autoencoder's tests
(tests/training/test_autoencoder_phase.py) and the plausibility score's (tests/evaluation/test_plausibility.py):
trained once per test session (``trained_label_autoencoder`` in tests/conftest.py)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.training.autoencoder_data import LabelMaps, LabelPatchSampler, SpatialAugmentation
from nnunetv2_mtmd.training.autoencoder_phase import train_autoencoder
from tests.evaluation.test_evaluate import make_spec

logger = logging.getLogger(__name__)

#: Two domains: "blob" (a disk and a box under it, unified ids 1, 2), "bars" (three stacked bars, 3, 4, 5).
DOMAINS = {"blob": ["disk", "box"], "bars": ["top", "middle", "bottom"]}
SIZE = 32


def spec() -> DomainSpec:
    return make_spec(DOMAINS)


def synthetic_map(domain: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One ``(size, size)`` int16 label map of simple shapes at a random position."""
    m = np.zeros((size, size), dtype=np.int16)
    yy, xx = np.mgrid[:size, :size]
    if domain == 0:
        r = 5.5
        cy, cx = int(rng.integers(8, size - 15)), int(rng.integers(8, size - 8))
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        top, left = int(cy + r) + 1, cx - 4
        m[top : top + 5, left : left + 8] = 2
    else:
        y0, x0 = int(rng.integers(3, size - 16)), int(rng.integers(2, 10))
        for k, label in enumerate((3, 4, 5)):
            m[y0 : y0 + 4, x0 + 2 * k : x0 + 20 - 2 * k] = label
            y0 += 5
    return m


def synthetic_maps(n: int, seed: int, empty: int = 2) -> LabelMaps:
    """``n`` maps with shapes and ``empty`` empty maps per domain."""
    rng = np.random.default_rng(seed)
    maps = [[synthetic_map(k, rng) for _ in range(n)] + [np.zeros((SIZE, SIZE), np.int16)] * empty for k in (0, 1)]
    return LabelMaps(maps)


def small_autoencoder(seed: int = 0) -> LabelAutoencoder:
    torch.manual_seed(seed)
    return LabelAutoencoder(spec().domain_label_ids, features=(8, 16, 32, 64), strides=(1, 2, 2, 2))


def train_small_autoencoder(folder: Path) -> dict:
    """A small autoencoder trained on 80 synthetic maps per domain (the phase as the trainers run it:
    domain-balanced crops, 95 % foreground, rotations within +-15 degrees, CE + soft Dice + MSC, Adam
    1e-2 with warm-up and poly decay)."""
    sp = spec()
    train, held_out = synthetic_maps(80, seed=0), synthetic_maps(20, seed=1, empty=0)
    aug = SpatialAugmentation(rotation=(-math.radians(15), math.radians(15)), mirror_axes=())
    sampler = LabelPatchSampler(train, sp.domain_label_ids, (SIZE, SIZE), 8, aug, 0.95, seed=0)
    val = LabelPatchSampler(held_out, sp.domain_label_ids, (SIZE, SIZE), 8, None, 1.0, seed=1)
    ae = small_autoencoder()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks train fastest on one thread of a shared CPU
    t0 = time.perf_counter()
    try:
        st = train_autoencoder(ae, sampler, val, 1000, torch.device("cpu"), folder, logger.info, save_every=250,
                               val_batches_per_check=1, warmup=20)
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - t0
    return {"ae": ae, "state": st, "held_out": held_out, "spec": sp, "seconds": seconds}


def _corrupt(m: np.ndarray, kind: str, domain: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """A corrupted copy of ``m`` and the labels the corruption touched."""
    out = m.copy()
    labels = [1, 2] if domain == 0 else [3, 4, 5]
    if kind == "specks":  # isolated pixels of every structure scattered over the background
        bg = np.argwhere(m == 0)
        for lab in labels:
            for y, x in bg[rng.choice(len(bg), 12, replace=False)]:
                out[y, x] = lab
        return out, labels
    target = labels[0]
    cy, cx = np.argwhere(m == target).mean(0).round().astype(int)
    if kind == "hole":  # a 3 x 3 hole in the middle of the first structure
        out[cy - 1 : cy + 2, cx - 1 : cx + 2] = 0
        return out, [target]
    # swapped label: the middle of the first structure labelled as the last one
    patch = out[cy - 1 : cy + 2, cx - 2 : cx + 2]
    patch[patch == target] = labels[-1]
    return out, [target, labels[-1]]
