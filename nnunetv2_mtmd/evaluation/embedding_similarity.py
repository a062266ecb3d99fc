"""Intra- and inter-domain cosine similarity of embeddings, and the table of them (Table 5 of
Boutillon et al. 2022).

The statistics half of the embedding analysis (:mod:`nnunetv2_mtmd.evaluation.embeddings`, step 5
there): pairs of distinct samples of the same / of different domains (:func:`domain_pair_indices`,
subsampled without replacement above a cap), their cosine similarities' mean and std
(:func:`cosine_similarity_stats`), and the ``similarity.csv`` / ``similarity.md`` tables.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SIMILARITY_COLUMNS",
    "cosine_similarity_stats",
    "domain_pair_indices",
    "format_mean_std",
    "similarity_markdown",
    "write_similarity_csv",
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


# ------------------------------------------------------------------------------------- tables
def format_mean_std(mean: float, std: float) -> str:
    """``"mean ± std"`` with three decimals, ``"-"`` for a NaN mean (a group without pairs)."""
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
            f"| {r['stage_name']} | {r['channels']} | {format_mean_std(r['intra_mean'], r['intra_std'])} | "
            f"{format_mean_std(r['inter_mean'], r['inter_std'])} | {r['n_intra']} | {r['n_inter']} |"
        )
    return "\n".join(lines) + "\n"


def write_similarity_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``similarity.csv``: the :data:`SIMILARITY_COLUMNS` of every row, floats with six decimals."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SIMILARITY_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
