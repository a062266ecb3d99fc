"""Multi-scale embeddings of a trained multi-domain 2D model: cosine similarities and t-SNE.

Boutillon et al. 2022 (the extension of the MICCAI 2021 paper) look at the multi-scale embeddings
``z_s = L2norm(GAP(stage output s))`` of slices that contain at least one structure, at every
encoder and decoder stage ``s``:

* Table 5: mean +- std of the cosine similarity between embeddings of two distinct slices of the
  **same** domain (intra-domain) and of **different** domains (inter-domain), per stage;
* t-SNE pictures per stage, one colour per domain.

What this module does (the ``nnUNetv2_mtmd_embeddings`` command):

1. Locate the trained model ``nnUNet_results/DatasetXXX/<trainer>__<plans>__<conf>/fold_<f>/<chk>``
   and rebuild its network as nnU-Net's predictor does (plans.json + the checkpoint's trainer
   class, ``build_network_architecture`` without deep supervision, strict ``load_state_dict``):
   :mod:`nnunetv2_mtmd.inference.model`.
2. Read the training and validation cases of that fold from the preprocessed data
   (``nnUNet_preprocessed/DatasetXXX/<data_identifier>``, already normalised) and the fold split from
   ``splits_final.json`` (fold ``all``: every case is a training case, there is no validation set; a
   fold beyond the split file gets nnU-Net's own seeded 80:20 split, as in training).
3. Slices: every axial (first preprocessed axis) slice with at least one foreground label; at most
   ``max_slices_per_case`` of them per case, evenly spaced over the case's foreground slices (``0``
   = all). Each slice is brought to the plans' patch size: along an axis where the slice is smaller
   it is zero-padded symmetrically, along an axis where it is larger a window of patch size is cut
   out, centred on the slice's foreground bounding box and shifted to stay inside the image (so the
   structures that made the slice eligible are inside the window). Image channels are padded with
   0, then the code channel (last) is set to the case's domain code everywhere.
4. The network runs in eval mode (domain-specific BN uses that domain's running statistics) under
   ``torch.no_grad`` in batches; ``collect_features`` gives the ``2 * n_stages - 1`` stage outputs
   (encoder ``enc0`` (full resolution) .. ``enc{n-1}`` (bottleneck), then decoder ``dec0`` (lowest
   resolution) .. ``dec{n-2}`` (full resolution)), embedded with
   :func:`nnunetv2_mtmd.losses.contrastive.embed` (GAP + L2 norm, as in the MSC loss).
5. Per stage: :func:`cosine_similarity_stats` over all selected slices (training and validation
   together) and a t-SNE picture (PCA to ``min(50, n_samples, dim)`` dimensions first, then t-SNE
   with perplexity ``min(30, (n - 1) / 3)``, ``init="pca"``).

Outputs (written all-or-nothing): ``similarity.csv``, ``similarity.md``, ``embeddings.npz``,
``tsne_<stage>.png`` per stage and ``settings.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.inference.model import (  # loading a trained model is inference's; re-exported
    ModelFolderError,
    ModelLocation,
    load_trained_network,
    locate_model_folder,
)
from nnunetv2_mtmd.io import atomic_output_dir, env_folder, load_json

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingResult",
    "ModelFolderError",
    "ModelLocation",
    "SliceRecord",
    "cosine_similarity_stats",
    "crop_or_pad_slice",
    "domain_pair_indices",
    "fold_split",
    "load_trained_network",
    "locate_model_folder",
    "plot_tsne",
    "run_embeddings",
    "select_slices",
    "similarity_markdown",
    "stage_names",
    "tsne_2d",
]

SIMILARITY_COLUMNS = (
    "stage",
    "stage_name",
    "channels",
    "intra_mean",
    "intra_std",
    "inter_mean",
    "inter_std",
    "n_intra",
    "n_inter",
)
_PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
#: t-SNE needs a handful of samples; below this a stage's picture only carries a note.
MIN_TSNE_SAMPLES = 4
#: below this many samples t-SNE runs single-threaded (see :func:`tsne_2d`).
TSNE_SINGLE_THREAD_BELOW = 5000


# -------------------------------------------------------------------------------------- stages
def stage_names(num_features: int) -> list[str]:
    """Names of the entries of the multi-domain U-Net's feature list.

    ``2 * n_stages - 1`` entries: encoder ``enc0`` (full resolution) .. ``enc{n-1}`` (bottleneck),
    then decoder ``dec0`` (lowest resolution) .. ``dec{n-2}`` (full resolution).
    """
    if num_features < 1 or num_features % 2 == 0:
        raise ValueError(
            f"stage_names: expected 2 * n_stages - 1 feature maps (encoder then decoder), found {num_features}."
        )
    n = (num_features + 1) // 2
    return [f"enc{i}" for i in range(n)] + [f"dec{i}" for i in range(n - 1)]


# --------------------------------------------------------------------------------- similarities
def _colex_pairs(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``(i, j)``, ``i < j``, with colexicographic index ``k = j (j - 1) / 2 + i``."""
    k = np.asarray(k, dtype=np.int64)
    j = np.floor((1.0 + np.sqrt(1.0 + 8.0 * k.astype(np.float64))) / 2.0).astype(np.int64)
    # float rounding for huge k: fix j so that j (j - 1) / 2 <= k < (j + 1) j / 2
    j -= (j * (j - 1) // 2) > k
    j += ((j + 1) * j // 2) <= k
    return k - j * (j - 1) // 2, j


def domain_pair_indices(
    domains: np.ndarray, kind: str, max_pairs: int | None, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Index pairs ``(i, j)``, ``i != j``, of samples of the same (``kind="intra"``) or of different
    (``kind="inter"``) domains.

    Every unordered pair is counted once. When there are more than ``max_pairs`` such pairs,
    ``max_pairs`` of them are drawn uniformly **without replacement** with ``rng`` (memory
    ``O(max_pairs)``, the full list is never built); otherwise all of them are returned.

    Args:
        domains: ``(N,)`` integer domain of each sample.
        kind: ``"intra"`` or ``"inter"``.
        max_pairs: cap on the number of pairs (``None`` = no cap).
        rng: random generator for the sampling (required when sampling happens).

    Returns:
        ``(i, j, total)``: two ``(P,)`` int64 index arrays and the number of pairs that exist.
    """
    domains = np.asarray(domains).reshape(-1)
    groups = [np.flatnonzero(domains == d) for d in np.unique(domains)]
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    if kind == "intra":
        blocks = [(a, a) for a in range(len(groups))]
        counts = sizes * (sizes - 1) // 2
    elif kind == "inter":
        blocks = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]
        counts = np.array([sizes[a] * sizes[b] for a, b in blocks], dtype=np.int64)
    else:
        raise ValueError(f"domain_pair_indices: kind must be 'intra' or 'inter', found {kind!r}.")
    total = int(counts.sum()) if len(blocks) else 0
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, 0
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1 or None, found {max_pairs!r}.")
    if max_pairs is None or total <= max_pairs:
        k = np.arange(total, dtype=np.int64)
    else:
        if rng is None:
            raise ValueError("domain_pair_indices: sampling pairs needs a random generator (rng).")
        k = np.sort(rng.choice(total, size=max_pairs, replace=False).astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    block = np.searchsorted(starts, k, side="right") - 1  # which (a, b) block each k falls into
    local = k - starts[block]
    ii = np.empty_like(k)
    jj = np.empty_like(k)
    for bi, (a, b) in enumerate(blocks):
        sel = block == bi
        if not sel.any():
            continue
        if a == b:
            li, lj = _colex_pairs(local[sel])
        else:
            li, lj = np.divmod(local[sel], sizes[b])
        ii[sel] = groups[a][li]
        jj[sel] = groups[b][lj]
    return ii, jj, total


def _pair_cosines(emb: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        out[s:s + chunk] = np.einsum("pd,pd->p", emb[i[s:s + chunk]], emb[j[s:s + chunk]])
    return np.clip(out, -1.0, 1.0)


def cosine_similarity_stats(
    emb: np.ndarray,
    domains: np.ndarray,
    max_pairs: int | None = 20000,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Mean and standard deviation of intra- and inter-domain cosine similarities (Table 5 of
    Boutillon et al. 2022).

    Intra-domain: all unordered pairs of two **distinct** samples of the same domain, pooled over
    domains; inter-domain: all unordered pairs of samples of different domains. Each group with
    more than ``max_pairs`` pairs is subsampled uniformly without replacement (see
    :func:`domain_pair_indices`). Rows are L2-normalised here (in float64; an all-zero row has
    similarity 0 to everything), so ``emb`` need not be normalised. The standard deviation is the
    population one (``ddof=0``). A group without pairs has mean and std NaN.

    Args:
        emb: ``(N, D)`` embeddings.
        domains: ``(N,)`` domain of each sample (any hashable integer codes).
        max_pairs: cap per group (``None`` = use every pair).
        rng: ``np.random.Generator`` for the subsampling; default ``np.random.default_rng(0)``.

    Returns:
        dict with ``intra_mean``, ``intra_std``, ``inter_mean``, ``inter_std`` (floats),
        ``n_intra``, ``n_inter`` (pairs used) and ``n_intra_total``, ``n_inter_total`` (pairs that exist).
    """
    emb = np.asarray(emb, dtype=np.float64)
    domains = np.asarray(domains).reshape(-1)
    if emb.ndim != 2:
        raise ValueError(f"cosine_similarity_stats: emb must have shape (N, D), found {emb.shape}.")
    if domains.shape[0] != emb.shape[0]:
        raise ValueError(
            f"cosine_similarity_stats: {emb.shape[0]} embeddings but {domains.shape[0]} domain labels."
        )
    if not np.all(np.isfinite(emb)):
        raise ValueError("cosine_similarity_stats: embeddings contain NaN or infinite values.")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    rng = np.random.default_rng(0) if rng is None else rng
    out: dict[str, Any] = {}
    for kind in ("intra", "inter"):
        i, j, total = domain_pair_indices(domains, kind, max_pairs, rng)
        sims = _pair_cosines(unit, i, j)
        out[f"{kind}_mean"] = float(sims.mean()) if sims.size else float("nan")
        out[f"{kind}_std"] = float(sims.std()) if sims.size else float("nan")
        out[f"n_{kind}"] = int(sims.size)
        out[f"n_{kind}_total"] = int(total)
    return out


# ------------------------------------------------------------------------------------- slices
def select_slices(seg: np.ndarray, max_slices: int) -> np.ndarray:
    """Indices along axis 0 of the slices of ``seg`` ``(Z, Y, X)`` with at least one label > 0.

    With ``max_slices > 0`` and more eligible slices than that, ``max_slices`` of them evenly spaced
    over the eligible ones (``np.linspace`` over their positions, rounded; first and last included).
    ``max_slices <= 0`` keeps all."""
    seg = np.asarray(seg)
    if seg.ndim < 2:
        raise ValueError(f"select_slices: expected a (Z, Y, X) label map, found shape {seg.shape}.")
    fg = np.flatnonzero((seg > 0).reshape(seg.shape[0], -1).any(axis=1))
    if max_slices <= 0 or len(fg) <= max_slices:
        return fg.astype(np.int64)
    pos = np.unique(np.round(np.linspace(0, len(fg) - 1, max_slices)).astype(np.int64))
    return fg[pos].astype(np.int64)


def _window(size: int, target: int, fg: np.ndarray) -> tuple[int, int, int]:
    """(start in the slice, length copied, start in the output) along one axis."""
    if size <= target:
        off = (target - size) // 2
        return 0, size, off
    center = (fg.min() + fg.max() + 1) / 2.0 if fg.size else size / 2.0
    start = int(round(center - target / 2.0))
    start = min(max(start, 0), size - target)
    return start, target, 0


def crop_or_pad_slice(
    image: np.ndarray, seg: np.ndarray | None, patch_size: Sequence[int], code: float
) -> np.ndarray:
    """Bring one slice to ``patch_size`` and set its code channel.

    Args:
        image: ``(C + 1, Y, X)`` slice, the last channel being the domain code channel.
        seg: ``(Y, X)`` labels of the slice (the crop window is centred on its foreground bounding
            box where the slice is larger than the patch) or None (centre crop).
        patch_size: ``(PY, PX)``.
        code: domain code written into every pixel of the last channel.

    Returns:
        ``(C + 1, PY, PX)`` float32: image channels cropped / zero-padded symmetrically (odd padding:
        one more pixel after), last channel constant ``code``.
    """
    image = np.asarray(image)
    if image.ndim != 1 + len(patch_size):
        raise ValueError(
            f"crop_or_pad_slice: image of shape {image.shape} does not match patch size {tuple(patch_size)}."
        )
    out = np.zeros((image.shape[0], *patch_size), dtype=np.float32)
    if seg is not None:
        fg_axes = np.nonzero(np.asarray(seg) > 0)
    else:
        fg_axes = tuple(np.zeros(0, dtype=np.int64) for _ in patch_size)
    src, dst = [slice(None)], [slice(None)]
    for ax, target in enumerate(patch_size):
        s0, n, d0 = _window(image.shape[ax + 1], int(target), fg_axes[ax])
        src.append(slice(s0, s0 + n))
        dst.append(slice(d0, d0 + n))
    out[tuple(dst)] = image[tuple(src)]
    out[-1] = code
    return out


# ---------------------------------------------------------------------------------- the split
def fold_split(
    preprocessed_base: Path, fold: int | str, identifiers: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Training and validation case ids of a fold, as nnU-Net's ``do_split`` chooses them.

    Fold ``all``: every case is a training case, no validation case. Otherwise
    ``splits_final.json`` (written when the model was trained) is read; a fold beyond the file gets
    nnU-Net's seeded random 80:20 split (seed ``12345 + fold``)."""
    ids = sorted(identifiers)
    if fold == "all":
        return ids, []
    splits_file = Path(preprocessed_base) / "splits_final.json"
    if not splits_file.is_file():
        raise InputDataError(
            f"{splits_file} does not exist, so the training/validation split of fold {fold} is unknown. It is "
            "written by nnUNetv2_train (or nnUNetv2_mtmd_splits); were the preprocessed data re-created "
            "after training?"
        )
    splits = load_json(splits_file)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise InputDataError(f"{splits_file}: expected a list of {{'train': [...], 'val': [...]}} objects.")
    if int(fold) < len(splits):
        tr, val = list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
    else:
        logger.warning(
            "%s has %d splits; fold %s uses nnU-Net's random (seeded) 80:20 split, as in training.",
            splits_file, len(splits), fold,
        )
        rnd = np.random.RandomState(seed=12345 + int(fold))
        keys = np.sort(ids)
        idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
        tr = [str(keys[i]) for i in idx_tr]
        val = [str(keys[i]) for i in range(len(keys)) if i not in idx_tr]
    missing = sorted(set(tr + val) - set(ids))
    if missing:
        raise InputDataError(
            f"Fold {fold} of {splits_file} names cases that are not in the preprocessed data: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
        )
    return sorted(tr), sorted(val)


# ------------------------------------------------------------------------------- embeddings
@dataclass
class SliceRecord:
    """One embedded slice."""

    case_id: str
    domain: int  # 0-based domain index
    split: str  # "train" or "val"
    slice_index: int


def _iter_slices(
    dataset: Any,
    cases: Sequence[tuple[str, str]],
    spec: DomainSpec,
    patch_size: Sequence[int],
    max_slices_per_case: int,
    progress: Callable[[Iterator], Iterator] | None,
) -> Iterator[tuple[SliceRecord, np.ndarray]]:
    it = cases if progress is None else progress(cases)
    for case_id, split in it:
        dom = spec.domain_of_case(case_id)
        data, seg, _, _ = dataset.load_case(case_id)
        seg0 = np.asarray(seg[0])
        if data.shape[0] != spec.code_channel + 1:
            raise InputDataError(
                f"Preprocessed case '{case_id}' has {data.shape[0]} channels, expected {spec.code_channel + 1} "
                "(image channels + the domain code channel)."
            )
        zs = select_slices(seg0, max_slices_per_case)
        for z in zs:
            img = np.asarray(data[:, int(z)], dtype=np.float32)
            found = float(img[-1].max())
            if round(found) != dom.code:
                logger.warning(
                    "Case %s slice %d: code channel holds %s, but the case id says domain %s (code %d); using %d.",
                    case_id, z, found, dom.name, dom.code, dom.code,
                )
            x = crop_or_pad_slice(img, seg0[int(z)], patch_size, float(dom.code))
            yield SliceRecord(case_id, dom.index, split, int(z)), x


def compute_embeddings(
    network: Any,
    slices: Iterator[tuple[SliceRecord, np.ndarray]],
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[list[SliceRecord], list[np.ndarray]]:
    """Run the network on ``(record, (C + 1, X, Y) slice)`` items in batches and embed every stage.

    Returns the records and, per stage, a ``(N, C_s)`` float32 array of L2-normalised GAP embeddings
    (:func:`nnunetv2_mtmd.losses.contrastive.embed`)."""
    import torch

    from nnunetv2_mtmd.losses.contrastive import embed

    records: list[SliceRecord] = []
    per_stage: list[list[np.ndarray]] | None = None
    buf_r: list[SliceRecord] = []
    buf_x: list[np.ndarray] = []
    old = network.collect_features
    network.collect_features = True

    def flush() -> None:
        nonlocal per_stage
        x = torch.from_numpy(np.stack(buf_x)).to(device)
        network(x)
        feats = network.last_features
        expected = torch.tensor([r.domain for r in buf_r], device=network.last_domain_idx.device)
        if not torch.equal(network.last_domain_idx.long(), expected):
            raise RuntimeError("the network read a different domain from the code channel than the case id says.")
        zs = [z.cpu().numpy().astype(np.float32) for z in embed(feats)]
        if per_stage is None:
            per_stage = [[] for _ in zs]
        for s, z in enumerate(zs):
            per_stage[s].append(z)
        records.extend(buf_r)
        buf_r.clear()
        buf_x.clear()

    try:
        network.eval()
        with torch.no_grad():
            for rec, x in slices:
                buf_r.append(rec)
                buf_x.append(x)
                if len(buf_x) >= batch_size:
                    flush()
            if buf_x:
                flush()
    finally:
        network.collect_features = old
        network.last_features = None
    if per_stage is None:
        return records, []
    return records, [np.concatenate(s, axis=0) for s in per_stage]


# ------------------------------------------------------------------------------------- t-SNE
def tsne_2d(emb: np.ndarray, seed: int = 0, pca_dims: int = 50, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of ``emb`` ``(N, D)``: PCA to ``min(pca_dims, N, D)`` dimensions, then
    ``sklearn.manifold.TSNE(perplexity=min(perplexity, (N - 1) / 3), init="pca", random_state=seed)``.

    Needs ``N >= 4`` (:data:`MIN_TSNE_SAMPLES`). Returns ``(N, 2)``.

    Below :data:`TSNE_SINGLE_THREAD_BELOW` samples the BLAS / OpenMP pools are limited to one thread:
    for small ``N`` threading gains nothing, and on a busy machine OpenMP's spinning threads made one
    24-sample t-SNE take 47 s instead of 0.3 s (measured with 2 threads on 2 loaded cores)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    emb = np.asarray(emb, dtype=np.float64)
    n, d = emb.shape
    if n < MIN_TSNE_SAMPLES:
        raise ValueError(f"t-SNE needs at least {MIN_TSNE_SAMPLES} samples, found {n}.")
    k = min(pca_dims, n, d)
    with threadpool_limits(limits=1 if n < TSNE_SINGLE_THREAD_BELOW else None):
        x = PCA(n_components=k, random_state=seed).fit_transform(emb) if k < d else emb
        if x.shape[1] < 2:  # TSNE's PCA init needs two input dimensions
            x = np.concatenate([x, np.zeros((n, 2 - x.shape[1]))], axis=1)
        tsne = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3.0), init="pca", random_state=seed)
        return tsne.fit_transform(x)


def plot_tsne(
    xy: np.ndarray | None,
    domains: np.ndarray,
    splits: np.ndarray,
    domain_names: Sequence[str],
    path: Path,
    title: str,
    note: str | None = None,
) -> Path:
    """Scatter plot of t-SNE coordinates ``xy`` ``(N, 2)``: colour = domain, marker 'o' training,
    'x' validation. ``xy=None`` writes a picture carrying only ``note`` (too few samples)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    handles = []
    if xy is not None:
        for d, name in enumerate(domain_names):
            color = _PALETTE[d % len(_PALETTE)]
            for split, marker in (("train", "o"), ("val", "x")):
                sel = (domains == d) & (splits == split)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], c=color, marker=marker, s=18 if marker == "o" else 24,
                               alpha=0.8, linewidths=1.0 if marker == "x" else 0.0)
            if (domains == d).any():
                handles.append(Line2D([], [], color=color, marker="s", linestyle="", label=name))
        for split, marker, label in (("train", "o", "training"), ("val", "x", "validation")):
            if (splits == split).any():
                handles.append(Line2D([], [], color="black", marker=marker, linestyle="", label=label))
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, note or "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    return Path(path)


# ------------------------------------------------------------------------------------- tables
def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}"


def similarity_markdown(rows: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """Markdown table in the layout of the paper's Table 5: one row per stage, intra- and
    inter-domain cosine similarity as mean ± std, and the number of pairs used."""
    lines = [*header, ""] if header else []
    lines += [
        "| stage | channels | intra-domain | inter-domain | intra pairs | inter pairs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage_name']} | {r['channels']} | {_pm(r['intra_mean'], r['intra_std'])} | "
            f"{_pm(r['inter_mean'], r['inter_std'])} | {r['n_intra']} | {r['n_inter']} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SIMILARITY_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


# ---------------------------------------------------------------------------------- the command
@dataclass
class EmbeddingResult:
    """What :func:`run_embeddings` computed (also written to the output folder)."""

    output: Path
    rows: list[dict[str, Any]]
    records: list[SliceRecord]
    stage_names: list[str]
    domain_names: list[str]
    seconds: dict[str, float] = field(default_factory=dict)


def run_embeddings(
    dataset: str | int,
    configuration: str,
    trainer: str,
    fold: int | str,
    output: Path,
    plans: str = "nnUNetPlans",
    checkpoint_name: str = "checkpoint_final.pth",
    device: str = "cpu",
    batch_size: int = 32,
    max_slices_per_case: int = 8,
    max_pairs: int = 20000,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbeddingResult:
    """Embeddings, similarity table and t-SNE pictures of one trained fold (see the module docstring).

    Raises :class:`ModelFolderError` / :class:`InputDataError` for a missing model, data or split,
    :class:`OutputExistsError` if ``output`` exists and ``overwrite`` is False."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"Output folder {output} already exists. Remove it or pass --overwrite.")
    if batch_size < 1:
        raise InputDataError(f"--batch_size must be >= 1, found {batch_size}.")
    if max_pairs < 1:
        raise InputDataError(f"--max_pairs must be >= 1, found {max_pairs}.")
    if device not in ("cpu", "cuda"):
        raise InputDataError(f"-device must be 'cpu' or 'cuda', found {device!r}.")
    t0 = time.perf_counter()
    loc = locate_model_folder(dataset, trainer, plans, configuration, fold, checkpoint_name)
    network, _plans_manager, cm, dataset_json = load_trained_network(loc, device)
    spec = DomainSpec.from_dataset_json(dataset_json)
    patch_size = [int(p) for p in cm.patch_size]
    if len(patch_size) != 2:
        raise InputDataError(
            f"Configuration '{configuration}' has a {len(patch_size)}D patch size {patch_size}; the embedding "
            "analysis works on 2D configurations (e.g. -c 2d)."
        )
    pre_base = env_folder("nnUNet_preprocessed") / loc.dataset_name
    pre_folder = pre_base / cm.data_identifier
    if not pre_folder.is_dir():
        raise InputDataError(
            f"Preprocessed data {pre_folder} do not exist. Run nnUNetv2_plan_and_preprocess -d {dataset} "
            f"-pl nnUNetPlannerMTMD -c {configuration} (with the plans the model was trained with)."
        )
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    try:
        dataset_class = infer_dataset_class(str(pre_folder))
    except (AssertionError, KeyError) as e:
        raise InputDataError(f"Cannot tell the format of the preprocessed data in {pre_folder}: {e}") from e
    ids = dataset_class.get_identifiers(str(pre_folder))
    if not ids:
        raise InputDataError(f"No preprocessed cases in {pre_folder}.")
    tr, val = fold_split(pre_base, loc.fold, ids)
    cases = [(c, "train") for c in tr] + [(c, "val") for c in val]
    ds = dataset_class(str(pre_folder), identifiers=sorted(set(tr + val)))
    t_load = time.perf_counter()

    def bar(it, desc: str = "embedding cases", unit: str = "case"):
        from tqdm import tqdm

        return tqdm(it, desc=desc, unit=unit, disable=not progress)

    records, embs = compute_embeddings(
        network, _iter_slices(ds, cases, spec, patch_size, max_slices_per_case, bar), batch_size, device
    )
    if len(records) < 2:
        raise InputDataError(
            f"Only {len(records)} slice(s) with a structure were found in the {len(cases)} cases of fold "
            f"{loc.fold}; at least 2 are needed for similarities."
        )
    t_emb = time.perf_counter()
    names = stage_names(len(embs))
    dom = np.array([r.domain for r in records], dtype=np.int64)
    split = np.array([r.split for r in records])
    rows = []
    for s, (name, e) in enumerate(zip(names, embs)):
        st = cosine_similarity_stats(e, dom, max_pairs, np.random.default_rng(seed))
        rows.append({"stage": s, "stage_name": name, "channels": int(e.shape[1]), **st})
        logger.info(
            "%-5s (%4d ch): intra %s, inter %s", name, e.shape[1],
            _pm(st["intra_mean"], st["intra_std"]), _pm(st["inter_mean"], st["inter_std"]),
        )
    t_sim = time.perf_counter()
    domain_names = spec.names
    n_per_domain = {n: int((dom == d).sum()) for d, n in enumerate(domain_names)}
    header = [
        f"# Multi-scale embedding similarity: {loc.training_output_dir.name}, fold {loc.fold}",
        "",
        f"Model: `{loc.checkpoint}`",
        f"Slices with at least one structure: {len(records)} ({int((split == 'train').sum())} training, "
        f"{int((split == 'val').sum())} validation; per domain: "
        + ", ".join(f"{k} {v}" for k, v in n_per_domain.items())
        + f"), at most {max_slices_per_case or 'all'} per case.",
        "Cosine similarity (mean ± std) of L2-normalised global-average-pooled stage outputs between two "
        "distinct slices of the same domain (intra) and of different domains (inter); "
        f"at most {max_pairs} pairs per group (seed {seed}).",
    ]
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        _write_csv(rows, tmp / "similarity.csv")
        (tmp / "similarity.md").write_text(similarity_markdown(rows, header))
        arrays: dict[str, np.ndarray] = {n: e for n, e in zip(names, embs)}
        arrays.update(
            stage_names=np.array(names),
            domain=dom,
            domain_names=np.array(domain_names),
            split=split,
            case_id=np.array([r.case_id for r in records]),
            slice_index=np.array([r.slice_index for r in records], dtype=np.int64),
        )
        np.savez_compressed(tmp / "embeddings.npz", **arrays)
        for name, e in bar(list(zip(names, embs)), "t-SNE", "stage"):
            title = f"t-SNE of {name} embeddings ({e.shape[1]} channels, {len(records)} slices)"
            if len(records) >= MIN_TSNE_SAMPLES:
                plot_tsne(tsne_2d(e, seed), dom, split, domain_names, tmp / f"tsne_{name}.png", title)
            else:
                plot_tsne(None, dom, split, domain_names, tmp / f"tsne_{name}.png", title,
                          note=f"t-SNE needs at least {MIN_TSNE_SAMPLES} slices")
        t_tsne = time.perf_counter()
        seconds = {
            "load": round(t_load - t0, 2),
            "embed": round(t_emb - t_load, 2),
            "similarity": round(t_sim - t_emb, 2),
            "tsne": round(t_tsne - t_sim, 2),
        }
        settings = {
            "model_folder": str(loc.training_output_dir),
            "fold": loc.fold,
            "checkpoint": str(loc.checkpoint),
            "preprocessed_folder": str(pre_folder),
            "patch_size": patch_size,
            "device": device,
            "batch_size": batch_size,
            "max_slices_per_case": max_slices_per_case,
            "max_pairs": max_pairs,
            "seed": seed,
            "num_slices": len(records),
            "num_training_cases": len(tr),
            "num_validation_cases": len(val),
            "stages": names,
            "seconds": seconds,
        }
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
    return EmbeddingResult(output, rows, records, names, domain_names, seconds)
