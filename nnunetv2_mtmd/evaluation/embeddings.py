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
   fold beyond the split file gets nnU-Net's own seeded 80:20 split, as in training):
   :func:`nnunetv2_mtmd.compat.fold_split`, the plugin's copy of ``nnUNetTrainer.do_split``.
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

Where the parts live: slices and their embeddings (steps 3-4) in
:mod:`nnunetv2_mtmd.evaluation.embedding_features`, the similarity statistics and tables in
:mod:`nnunetv2_mtmd.evaluation.embedding_similarity`, t-SNE and its pictures in
:mod:`nnunetv2_mtmd.evaluation.embedding_tsne`; this module runs them (:func:`run_embeddings`) and
re-exports their names.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.compat import fold_split  # nnU-Net's do_split for a trained fold; re-exported
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.evaluation.embedding_features import (  # noqa: F401  (re-exported)
    SliceRecord,
    compute_embeddings,
    crop_or_pad_slice,
    iter_slices,
    select_slices,
    stage_names,
)
from nnunetv2_mtmd.evaluation.embedding_similarity import (  # noqa: F401  (re-exported)
    SIMILARITY_COLUMNS,
    _colex_pairs,
    cosine_similarity_stats,
    domain_pair_indices,
    format_mean_std,
    similarity_markdown,
    write_similarity_csv,
)
from nnunetv2_mtmd.evaluation.embedding_tsne import (  # noqa: F401  (re-exported)
    MIN_TSNE_SAMPLES,
    TSNE_SINGLE_THREAD_BELOW,
    plot_tsne,
    tsne_2d,
)
from nnunetv2_mtmd.inference.model import (  # loading a trained model is inference's; re-exported
    ModelFolderError,
    ModelLocation,
    load_trained_network,
    locate_model_folder,
)
from nnunetv2_mtmd.io import atomic_output_dir, env_folder

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


# ------------------------------------------------------------------------------------ the fold
@dataclass
class _Fold:
    """A trained fold's network and its preprocessed cases, as :func:`run_embeddings` reads them."""

    loc: ModelLocation
    network: Any
    spec: DomainSpec
    patch_size: list[int]
    pre_folder: Path
    dataset: Any  # the nnU-Net dataset class instance holding the fold's training and validation cases
    train: list[str]
    val: list[str]

    @property
    def cases(self) -> list[tuple[str, str]]:
        """``(case id, "train" / "val")``: the training cases, then the validation cases."""
        return [(c, "train") for c in self.train] + [(c, "val") for c in self.val]


def _check_arguments(output: Path, overwrite: bool, batch_size: int, max_pairs: int, device: str) -> None:
    if output.exists() and not overwrite:
        raise OutputExistsError(f"Output folder {output} already exists. Remove it or pass --overwrite.")
    if batch_size < 1:
        raise InputDataError(f"--batch_size must be >= 1, found {batch_size}.")
    if max_pairs < 1:
        raise InputDataError(f"--max_pairs must be >= 1, found {max_pairs}.")
    if device not in ("cpu", "cuda"):
        raise InputDataError(f"-device must be 'cpu' or 'cuda', found {device!r}.")


def _load_fold(
    dataset: str | int, configuration: str, trainer: str, plans: str, fold: int | str, checkpoint_name: str,
    device: str,
) -> _Fold:
    """Steps 1 and 2 of the module docstring: the trained network, its preprocessed data and the split."""
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
    ds = dataset_class(str(pre_folder), identifiers=sorted(set(tr + val)))
    return _Fold(loc, network, spec, patch_size, pre_folder, ds, tr, val)


def _progress_bar(progress: bool) -> Callable[..., Iterator]:
    """``bar(iterable, desc, unit)``: a tqdm progress bar, hidden unless ``progress``."""

    def bar(it, desc: str = "embedding cases", unit: str = "case"):
        from tqdm import tqdm

        return tqdm(it, desc=desc, unit=unit, disable=not progress)

    return bar


# ----------------------------------------------------------------------------------- the outputs
def _similarity_rows(
    names: Sequence[str], embs: Sequence[np.ndarray], dom: np.ndarray, max_pairs: int, seed: int
) -> list[dict[str, Any]]:
    """One row of ``similarity.csv`` per stage (each stage's pairs drawn with a fresh ``seed`` generator)."""
    rows = []
    for s, (name, e) in enumerate(zip(names, embs)):
        st = cosine_similarity_stats(e, dom, max_pairs, np.random.default_rng(seed))
        rows.append({"stage": s, "stage_name": name, "channels": int(e.shape[1]), **st})
        logger.info(
            "%-5s (%4d ch): intra %s, inter %s", name, e.shape[1],
            format_mean_std(st["intra_mean"], st["intra_std"]), format_mean_std(st["inter_mean"], st["inter_std"]),
        )
    return rows


def _markdown_header(
    loc: ModelLocation, dom: np.ndarray, split: np.ndarray, domain_names: Sequence[str],
    max_slices_per_case: int, max_pairs: int, seed: int,
) -> list[str]:
    """The lines above ``similarity.md``'s table: the model, the slices and how they were compared."""
    n_per_domain = {n: int((dom == d).sum()) for d, n in enumerate(domain_names)}
    return [
        f"# Multi-scale embedding similarity: {loc.training_output_dir.name}, fold {loc.fold}",
        "",
        f"Model: `{loc.checkpoint}`",
        f"Slices with at least one structure: {len(dom)} ({int((split == 'train').sum())} training, "
        f"{int((split == 'val').sum())} validation; per domain: "
        + ", ".join(f"{k} {v}" for k, v in n_per_domain.items())
        + f"), at most {max_slices_per_case or 'all'} per case.",
        "Cosine similarity (mean ± std) of L2-normalised global-average-pooled stage outputs between two "
        "distinct slices of the same domain (intra) and of different domains (inter); "
        f"at most {max_pairs} pairs per group (seed {seed}).",
    ]


def _save_arrays(
    path: Path, names: Sequence[str], embs: Sequence[np.ndarray], records: Sequence[SliceRecord],
    dom: np.ndarray, split: np.ndarray, domain_names: Sequence[str],
) -> None:
    """``embeddings.npz``: one array per stage, then the stage and domain names and every slice's
    domain, split, case id and slice index."""
    arrays: dict[str, np.ndarray] = {n: e for n, e in zip(names, embs)}
    arrays.update(
        stage_names=np.array(names),
        domain=dom,
        domain_names=np.array(domain_names),
        split=split,
        case_id=np.array([r.case_id for r in records]),
        slice_index=np.array([r.slice_index for r in records], dtype=np.int64),
    )
    np.savez_compressed(path, **arrays)


def _write_tsne_pictures(
    folder: Path, names: Sequence[str], embs: Sequence[np.ndarray], dom: np.ndarray, split: np.ndarray,
    domain_names: Sequence[str], seed: int, bar: Callable[..., Iterator],
) -> None:
    """``tsne_<stage>.png`` per stage (a picture with only a note below :data:`MIN_TSNE_SAMPLES` slices)."""
    for name, e in bar(list(zip(names, embs)), "t-SNE", "stage"):
        title = f"t-SNE of {name} embeddings ({e.shape[1]} channels, {len(dom)} slices)"
        if len(dom) >= MIN_TSNE_SAMPLES:
            plot_tsne(tsne_2d(e, seed), dom, split, domain_names, folder / f"tsne_{name}.png", title)
        else:
            plot_tsne(None, dom, split, domain_names, folder / f"tsne_{name}.png", title,
                      note=f"t-SNE needs at least {MIN_TSNE_SAMPLES} slices")


def _settings(f: _Fold, options: dict[str, Any], num_slices: int, names: Sequence[str],
              seconds: dict[str, float]) -> dict[str, Any]:
    """``settings.json``: the model, the data, the options (``device`` .. ``seed``) and the times."""
    return {
        "model_folder": str(f.loc.training_output_dir),
        "fold": f.loc.fold,
        "checkpoint": str(f.loc.checkpoint),
        "preprocessed_folder": str(f.pre_folder),
        "patch_size": f.patch_size,
        **options,
        "num_slices": num_slices,
        "num_training_cases": len(f.train),
        "num_validation_cases": len(f.val),
        "stages": list(names),
        "seconds": seconds,
    }


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
    _check_arguments(output, overwrite, batch_size, max_pairs, device)
    t0 = time.perf_counter()
    f = _load_fold(dataset, configuration, trainer, plans, fold, checkpoint_name, device)
    cases = f.cases
    t_load = time.perf_counter()
    bar = _progress_bar(progress)
    records, embs = compute_embeddings(
        f.network, iter_slices(f.dataset, cases, f.spec, f.patch_size, max_slices_per_case, bar), batch_size, device
    )
    if len(records) < 2:
        raise InputDataError(
            f"Only {len(records)} slice(s) with a structure were found in the {len(cases)} cases of fold "
            f"{f.loc.fold}; at least 2 are needed for similarities."
        )
    t_emb = time.perf_counter()
    names = stage_names(len(embs))
    dom = np.array([r.domain for r in records], dtype=np.int64)
    split = np.array([r.split for r in records])
    rows = _similarity_rows(names, embs, dom, max_pairs, seed)
    t_sim = time.perf_counter()
    domain_names = f.spec.names
    header = _markdown_header(f.loc, dom, split, domain_names, max_slices_per_case, max_pairs, seed)
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        write_similarity_csv(rows, tmp / "similarity.csv")
        (tmp / "similarity.md").write_text(similarity_markdown(rows, header))
        _save_arrays(tmp / "embeddings.npz", names, embs, records, dom, split, domain_names)
        _write_tsne_pictures(tmp, names, embs, dom, split, domain_names, seed, bar)
        t_tsne = time.perf_counter()
        seconds = {
            "load": round(t_load - t0, 2),
            "embed": round(t_emb - t_load, 2),
            "similarity": round(t_sim - t_emb, 2),
            "tsne": round(t_tsne - t_sim, 2),
        }
        options = {"device": device, "batch_size": batch_size, "max_slices_per_case": max_slices_per_case,
                   "max_pairs": max_pairs, "seed": seed}
        settings = _settings(f, options, len(records), names, seconds)
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2))
    return EmbeddingResult(output, rows, records, names, domain_names, seconds)
