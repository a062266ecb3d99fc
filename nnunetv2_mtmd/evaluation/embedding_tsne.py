"""t-SNE of one stage's embeddings and its picture (one colour per domain, training 'o', validation 'x').

The pictures of the embedding analysis (:mod:`nnunetv2_mtmd.evaluation.embeddings`, step 5 there):
:func:`tsne_2d` (PCA, then scikit-learn's t-SNE) and :func:`plot_tsne` (``tsne_<stage>.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "MIN_TSNE_SAMPLES",
    "TSNE_SINGLE_THREAD_BELOW",
    "plot_tsne",
    "tsne_2d",
]

_PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
#: t-SNE needs a handful of samples; below this a stage's picture only carries a note.
MIN_TSNE_SAMPLES = 4
#: below this many samples t-SNE runs single-threaded (see :func:`tsne_2d`).
TSNE_SINGLE_THREAD_BELOW = 5000


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
