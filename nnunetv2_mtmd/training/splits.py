"""Cross-validation splits of a merged multi-domain dataset (``splits_final.json``).

Two schemes (Boutillon et al. 2021/2022, evaluation protocol):

``5fold`` -- :func:`domain_stratified_kfold`
    K-fold cross-validation stratified by domain. Every domain's cases are shuffled (seeded per
    domain) and dealt round-robin to the folds' validation sets; the deal of domain ``k`` starts at
    the fold after the one where domain ``k-1`` stopped, so the total validation sizes differ by at
    most one case. A domain with at least ``n_folds`` cases is in the validation set of every fold;
    a domain with fewer cases has its cases in distinct folds (no fold gets two of them) and is
    absent from the other folds' validation sets. A domain with at least two cases is in every
    fold's training set; a domain with a single case is missing from the training set of the fold
    that validates on it (a warning is logged). There must be at least ``n_folds`` cases in total,
    so that no fold has an empty validation set.

``loo`` -- :func:`leave_one_out_splits`
    The paper's leave-one-out: the number of folds is the number of cases of the smallest domain;
    fold ``i`` holds out the ``i``-th case (after a seeded shuffle) of EVERY domain, everything else
    trains. Cases of larger domains beyond position ``n_folds - 1`` of their shuffled order are never
    held out. Needs at least two cases in every domain.

Both return nnU-Net's format: a list of ``{"train": [...], "val": [...]}`` with case ids sorted
within each list. The shuffle of a domain depends only on the seed and the domain code, so adding a
domain does not reshuffle the others. nnU-Net's default seed is 12345.

Where the case ids come from (:func:`find_split_target`): if ``nnUNet_preprocessed/DatasetXXX``
exists, its dataset.json gives the domain block and the case ids are those of the preprocessed case
files (``<case>.pkl`` in the configuration folders, as nnU-Net's trainer sees them; all
configuration folders must agree), else of ``gt_segmentations``; if the dataset has not been
preprocessed yet, dataset.json and the label files of ``nnUNet_raw/DatasetXXX/labelsTr`` are used.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.io import atomic_save_json, env_folder, find_dataset, load_json

logger = logging.getLogger(__name__)

DEFAULT_SEED = 12345
SCHEMES = ("5fold", "loo")

Split = dict[str, list[str]]


# --------------------------------------------------------------------------------------- pure part
def group_by_domain(case_ids: Iterable[str], spec: DomainSpec) -> dict[str, list[str]]:
    """Map domain name -> sorted case ids of that domain, for every domain of ``spec`` (in code order).

    Raises :class:`InputDataError` for duplicate ids and
    :class:`~nnunetv2_mtmd.errors.DomainSpecError` for ids without a known ``<domain>_`` prefix."""
    ids = list(case_ids)
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise InputDataError(f"Case ids must be unique, found duplicates: {dupes[:10]}.")
    groups: dict[str, list[str]] = {d.name: [] for d in spec.domains}
    for c in sorted(ids):
        groups[spec.domain_of_case(c).name].append(c)
    return groups


def _shuffled(cases: Sequence[str], seed: int, code: int) -> list[str]:
    """``cases`` (sorted) in a seeded random order that depends only on ``seed`` and the domain code."""
    rng = np.random.default_rng([int(seed), int(code)])
    order = rng.permutation(len(cases))
    return [sorted(cases)[i] for i in order]


def _present_groups(case_ids: Iterable[str], spec: DomainSpec) -> dict[str, list[str]]:
    groups = group_by_domain(case_ids, spec)
    empty = [name for name, cases in groups.items() if not cases]
    if empty:
        logger.warning("Domains without cases are left out of the splits: %s", ", ".join(empty))
    present = {name: cases for name, cases in groups.items() if cases}
    if not present:
        raise InputDataError("No cases given: cannot build cross-validation splits.")
    return present


def _finish(val_sets: list[list[str]], all_ids: list[str]) -> list[Split]:
    folds = []
    for val in val_sets:
        vs = set(val)
        folds.append({"train": sorted(c for c in all_ids if c not in vs), "val": sorted(val)})
    return folds


def domain_stratified_kfold(
    case_ids: Iterable[str], spec: DomainSpec, n_folds: int = 5, seed: int = DEFAULT_SEED
) -> list[Split]:
    """K-fold splits stratified by domain (see the module docstring for the exact rule).

    Returns ``n_folds`` dicts ``{"train": [...], "val": [...]}`` (sorted ids); every case is in
    exactly one validation set. Raises :class:`InputDataError` if ``n_folds < 2`` or there are fewer
    cases than folds."""
    if not isinstance(n_folds, int) or n_folds < 2:
        raise InputDataError(f"n_folds must be an integer >= 2, found {n_folds!r}.")
    groups = _present_groups(case_ids, spec)
    all_ids = sorted(c for cases in groups.values() for c in cases)
    if len(all_ids) < n_folds:
        raise InputDataError(
            f"{len(all_ids)} cases cannot fill {n_folds} folds (every fold needs at least one validation "
            "case). Use fewer folds or the 'loo' scheme."
        )
    val_sets: list[list[str]] = [[] for _ in range(n_folds)]
    offset = 0
    for d in spec.domains:
        cases = groups.get(d.name)
        if not cases:
            continue
        if len(cases) < n_folds:
            logger.warning(
                "Domain '%s' has %d cases for %d folds: it is in the validation set of only %d folds.",
                d.name,
                len(cases),
                n_folds,
                len(cases),
            )
        if len(cases) == 1:
            logger.warning(
                "Domain '%s' has a single case: the fold validating on it has no training case "
                "of that domain.",
                d.name,
            )
        for j, c in enumerate(_shuffled(cases, seed, d.code)):
            val_sets[(offset + j) % n_folds].append(c)
        offset += len(cases)
    return _finish(val_sets, all_ids)


def leave_one_out_splits(case_ids: Iterable[str], spec: DomainSpec, seed: int = DEFAULT_SEED) -> list[Split]:
    """The paper's leave-one-out: ``n`` folds with ``n`` = number of cases of the smallest domain;
    fold ``i`` validates on the ``i``-th case (seeded shuffle) of every domain.

    Raises :class:`InputDataError` if a domain has fewer than two cases."""
    groups = _present_groups(case_ids, spec)
    n_folds = min(len(c) for c in groups.values())
    if n_folds < 2:
        small = [name for name, c in groups.items() if len(c) < 2]
        raise InputDataError(
            f"Leave-one-out needs at least 2 cases in every domain; {', '.join(small)} has only one "
            "(its only case would never be trained on). Add cases or use the '5fold' scheme."
        )
    shuffled = {d.name: _shuffled(groups[d.name], seed, d.code) for d in spec.domains if d.name in groups}
    all_ids = sorted(c for cases in groups.values() for c in cases)
    val_sets = [[order[i] for order in shuffled.values()] for i in range(n_folds)]
    return _finish(val_sets, all_ids)


def make_splits(
    case_ids: Iterable[str], spec: DomainSpec, scheme: str = "5fold", seed: int = DEFAULT_SEED
) -> list[Split]:
    """Dispatch to :func:`domain_stratified_kfold` (``5fold``) or :func:`leave_one_out_splits` (``loo``)."""
    if scheme == "5fold":
        return domain_stratified_kfold(case_ids, spec, n_folds=5, seed=seed)
    if scheme == "loo":
        return leave_one_out_splits(case_ids, spec, seed=seed)
    raise InputDataError(f"Unknown split scheme {scheme!r}; expected one of {', '.join(SCHEMES)}.")


# ------------------------------------------------------------------------------------ file part
@dataclass(frozen=True)
class SplitTarget:
    """Where a dataset's splits go and which cases they cover."""

    preprocessed_dir: Path
    dataset_json: Path
    spec: DomainSpec
    case_ids: list[str]
    source: str

    @property
    def splits_file(self) -> Path:
        return self.preprocessed_dir / "splits_final.json"


def _preprocessed_case_ids(pre_dir: Path, file_ending: str | None) -> tuple[list[str], str] | None:
    """Case ids of the preprocessed case files of ``pre_dir``, or None if there are none."""
    found: dict[str, set[str]] = {}
    for sub in sorted(p for p in pre_dir.iterdir() if p.is_dir() and p.name != "gt_segmentations"):
        ids = {f.name[:-4] for f in sub.iterdir() if f.name.endswith(".pkl")}
        if ids:
            found[sub.name] = ids
    if found:
        sets = list(found.values())
        if any(s != sets[0] for s in sets[1:]):
            sizes = ", ".join(f"{k} ({len(v)} cases)" for k, v in found.items())
            raise InputDataError(
                f"The preprocessed configuration folders of {pre_dir} hold different cases: {sizes}. "
                "Re-run nnUNetv2_plan_and_preprocess (or delete stale configuration folders)."
            )
        return sorted(sets[0]), f"preprocessed case files in {pre_dir / next(iter(found))}"
    gt = pre_dir / "gt_segmentations"
    if file_ending and gt.is_dir():
        ids = sorted(f.name[: -len(file_ending)] for f in gt.iterdir() if f.name.endswith(file_ending))
        if ids:
            return ids, f"label files in {gt}"
    return None


def _raw_case_ids(raw_dir: Path, dj: dict) -> tuple[list[str], str]:
    if isinstance(dj.get("dataset"), dict):
        return sorted(dj["dataset"]), f"the 'dataset' entry of {raw_dir / 'dataset.json'}"
    ending = dj.get("file_ending")
    if not isinstance(ending, str):
        raise InputDataError(f"{raw_dir / 'dataset.json'} has no 'file_ending'.")
    labels = raw_dir / "labelsTr"
    if not labels.is_dir():
        raise InputDataError(f"{labels} does not exist: cannot list the training cases.")
    ids = sorted(f.name[: -len(ending)] for f in labels.iterdir() if f.name.endswith(ending))
    return ids, f"label files in {labels}"


def find_split_target(identifier: str | int) -> SplitTarget:
    """Locate dataset ``identifier`` and list its training cases (see module docstring for the order)."""
    pre_root = env_folder("nnUNet_preprocessed")
    pre_dir: Path | None = None
    if pre_root.is_dir():
        try:
            pre_dir = find_dataset(identifier, pre_root)
        except InputDataError:
            pre_dir = None
    if pre_dir is not None and (pre_dir / "dataset.json").is_file():
        dj_path = pre_dir / "dataset.json"
        dj = load_json(dj_path)
        spec = DomainSpec.from_dataset_json(dj_path)
        got = _preprocessed_case_ids(pre_dir, dj.get("file_ending"))
        if got is not None:
            return SplitTarget(pre_dir, dj_path, spec, got[0], got[1])
    raw_dir = find_dataset(identifier, env_folder("nnUNet_raw"))
    dj_path = raw_dir / "dataset.json"
    dj = load_json(dj_path)
    spec = DomainSpec.from_dataset_json(dj_path)
    ids, source = _raw_case_ids(raw_dir, dj)
    if pre_dir is None:
        pre_dir = pre_root / raw_dir.name
    return SplitTarget(pre_dir, dj_path, spec, ids, source)


def _normalise(splits: object) -> object:
    if not isinstance(splits, list):
        return splits
    out = []
    for fold in splits:
        if isinstance(fold, dict) and all(isinstance(fold.get(k), list) for k in ("train", "val")):
            out.append({"train": sorted(map(str, fold["train"])), "val": sorted(map(str, fold["val"]))})
        else:
            out.append(fold)
    return out


def write_splits(splits: list[Split], path: Path, overwrite: bool = False) -> bool:
    """Write ``splits`` to ``path`` (atomically). Returns False if an identical file already exists.

    An existing, different (or unreadable) file raises :class:`OutputExistsError` unless ``overwrite``."""
    path = Path(path)
    if path.exists():
        try:
            with open(path) as f:
                existing = json.load(f)
        except (OSError, json.JSONDecodeError):
            existing = None
        if existing is not None and _normalise(existing) == _normalise(splits):
            return False
        if not overwrite:
            n_old = len(existing) if isinstance(existing, list) else "?"
            raise OutputExistsError(
                f"{path} already exists and holds a different split ({n_old} folds; the new one has "
                f"{len(splits)}). Trained folds refer to it: pass --overwrite only if you mean to replace it."
            )
    atomic_save_json(splits, path)
    return True


def describe_splits(splits: list[Split], spec: DomainSpec) -> str:
    """One line per fold: number of training / validation cases per domain."""
    lines = []
    for i, fold in enumerate(splits):
        parts = []
        for d in spec.domains:
            ntr = sum(spec.domain_of_case(c).name == d.name for c in fold["train"])
            nva = sum(spec.domain_of_case(c).name == d.name for c in fold["val"])
            parts.append(f"{d.name} {ntr}/{nva}")
        lines.append(f"fold {i}: train/val " + ", ".join(parts))
    return "\n".join(lines)
