"""The one registry of training schemes (Boutillon et al. 2021/2022), plain data.

Every place that lists schemes derives from :data:`SCHEMES`: the trainer classes' table
(``training/trainers/schemes.py``, checked against it by a test), the short-schedule and study
trainers (``<trainer>_debug``, ``<trainer>_study``), the study's scheme names, labels and trainers,
the benchmark's compared schemes, and the scheme table of docs/method.md (:func:`markdown_table`,
checked by a test). The trainer classes themselves are literal ``class`` statements, so that searching
for a trainer name finds its definition; this module names them as strings and imports nothing heavy.

Paper: Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets", MICCAI 2021, and its 2022 extension
(multi-scale contrastive regularization, multi-joint anatomical priors). docs/design.md, "Schemes".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from nnunetv2_mtmd.errors import InputDataError


@dataclass(frozen=True)
class Scheme:
    """One training scheme.

    ``name``: the scheme id used by the study and in its folders (``DSL_MSC``); ``trainer``: the nnU-Net
    trainer class name (``-tr``); ``label``: the paper's name (``DSL+MSC``); ``multi_domain``: trained on
    the merged dataset (False only for the Individual baseline, stock nnU-Net on one dataset);
    ``norm``: ``"dsbn"`` (domain-specific batch norm), ``"shared"`` (one batch norm) or ``"stock"``
    (nnU-Net's planned norm); ``heads``: ``"per_domain"``, ``"shared"`` or ``"stock"``; ``msc``: the
    stages of the supervised contrastive term (``"all"``, ``"bottleneck"`` = SSC) or None; ``mjap``:
    multi-joint anatomical priors; ``benchmark_key``: the key of the scheme in
    ``nnUNetv2_mtmd_benchmark``'s JSON output, None when the benchmark does not time it;
    ``replicate_of``: the scheme this one retrains with another seed (its spread against it is the
    retraining noise), None for an ordinary scheme.
    """

    name: str
    trainer: str
    label: str
    multi_domain: bool
    norm: str
    heads: str
    msc: str | None
    mjap: bool
    benchmark_key: str | None = None
    replicate_of: str | None = None

    @property
    def study_trainer(self) -> str:
        """The study-budget trainer (``training/trainers/study.py``)."""
        return f"{self.trainer}_study"

    @property
    def debug_trainer(self) -> str | None:
        """The 1-epoch debug trainer (``training/trainers/schedules.py``); None for the Individual baseline."""
        return f"{self.trainer}_debug" if self.multi_domain else None


INDIVIDUAL = "Individual"

#: Every scheme, in the order of the paper's tables (Individual first: the reference of comparisons).
SCHEMES: tuple[Scheme, ...] = (
    Scheme(INDIVIDUAL, "nnUNetTrainer", "Individual", False, "stock", "stock", None, False),
    Scheme("Shared", "nnUNetTrainerMTMD_Shared", "Shared", True, "shared", "shared", None, False),
    Scheme("Shared_MJAP", "nnUNetTrainerMTMD_Shared_MJAP", "Shared+MJAP", True, "shared", "shared", None, True),
    Scheme("DSL", "nnUNetTrainerMTMD_DSL", "DSL", True, "dsbn", "per_domain", None, False, "DSL"),
    Scheme("DSL_SSC", "nnUNetTrainerMTMD_DSL_SSC", "DSL+SSC", True, "dsbn", "per_domain", "bottleneck", False),
    Scheme("DSL_MSC", "nnUNetTrainerMTMD_DSL_MSC", "DSL+MSC", True, "dsbn", "per_domain", "all", False, "DSL_MSC"),
    Scheme("DSL_MJAP", "nnUNetTrainerMTMD_DSL_MJAP", "DSL+MJAP", True, "dsbn", "per_domain", None, True),
    Scheme("DSL_MSC_MJAP", "nnUNetTrainerMTMD", "DSL+MSC+MJAP", True, "dsbn", "per_domain", "all", True, "MTMD"),
    # beyond the paper's table: its future work (a learnable temperature per MSC scale), and a DSL
    # replicate with another seed (retraining noise)
    Scheme("DSL_MSC_LT", "nnUNetTrainerMTMD_DSL_MSC_LT", "DSL+MSC+LT", True, "dsbn", "per_domain", "all",
           False),
    Scheme("DSL_seed2", "nnUNetTrainerMTMD_DSL_seed2", "DSL (seed 2)", True, "dsbn", "per_domain", None, False,
           replicate_of="DSL"),
)
BY_NAME: dict[str, Scheme] = {s.name: s for s in SCHEMES}
BY_TRAINER: dict[str, Scheme] = {s.trainer: s for s in SCHEMES}
MULTI_DOMAIN: tuple[Scheme, ...] = tuple(s for s in SCHEMES if s.multi_domain)


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name`` (scheme id or trainer class name); a clear error naming the closest
    valid scheme otherwise."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name in BY_TRAINER:
        return BY_TRAINER[name]
    close = difflib.get_close_matches(name, [*BY_NAME, *BY_TRAINER], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputDataError(f"Unknown scheme {name!r}; choose from {', '.join(BY_NAME)}.{hint}")


def replicates() -> dict[str, str]:
    """Replicate scheme -> the scheme it retrains (with another seed)."""
    return {s.name: s.replicate_of for s in SCHEMES if s.replicate_of}


def benchmark_schemes() -> dict[str, Scheme]:
    """The schemes ``nnUNetv2_mtmd_benchmark`` times, by their key in its JSON output."""
    return {s.benchmark_key: s for s in SCHEMES if s.benchmark_key}


def markdown_table() -> str:
    """The scheme table of docs/method.md (a test keeps the two identical)."""
    norm = {"dsbn": "DSBN", "shared": "shared BN", "stock": "nnU-Net's"}
    heads = {"per_domain": "per domain", "shared": "one over all labels", "stock": "one (its dataset)"}
    msc = {"all": "all stages", "bottleneck": "bottleneck", None: "-"}
    rows = ["| scheme | trainer (`-tr`) | data | norm | heads | MSC | MJAP |", "|---|---|---|---|---|---|---|"]
    for s in SCHEMES:
        data = "merged dataset" if s.multi_domain else "one dataset"
        rows.append(f"| {s.label} | `{s.trainer}` | {data} | {norm[s.norm]} | {heads[s.heads]} | {msc[s.msc]} | "
                    f"{'yes' if s.mjap else '-'} |")
    return "\n".join(rows)
