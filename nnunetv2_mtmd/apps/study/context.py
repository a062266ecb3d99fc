"""What every stage of the study shares (:class:`StudyContext`): the options, the work folder and its
nnU-Net folders, the recorded state, the budget, the sources, and the step runner."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.budget import StudyBudget
from nnunetv2_mtmd.apps.study.constants import (
    BUDGET_ENV,
    DEFAULT_FOLDS,
    DEFAULT_LATER,
    DEFAULT_SCHEMES,
    INDIVIDUAL,
    MEASURE_ENV,
    MERGED_ID,
    MERGED_NAME,
    N_SPLITS,
    PLANS_NAME,
    REALDATA_DIR,
    SCHEME_TRAINERS,
    SPLIT_SEED,
    STATE_FILE,
    THREADS_ENV,
)
from nnunetv2_mtmd.apps.study.data import Source, Split, find_sources
from nnunetv2_mtmd.apps.study.progress import fold_folder, training_status
from nnunetv2_mtmd.apps.study.runner import StudyRunner, setup_study_logging
from nnunetv2_mtmd.apps.study.state import COMMIT_FILE, StudyState, code_commit
from nnunetv2_mtmd.apps.workspace import nnunet_env
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import load_json

logger = logging.getLogger(__name__)


@dataclass
class StudyOptions:
    """Everything the pipeline needs; see ``nnUNetv2_mtmd_study --help``."""

    workdir: Path
    sources_dir: Path | None = None
    domains: Sequence[str] | None = None
    schemes: Sequence[str] | None = None
    #: schemes trained after every fold of the others ("if time allows"; None: recorded, else DEFAULT_LATER)
    later: Sequence[str] | None = None
    folds: Sequence[int] | None = None
    budget: dict[str, Any] | None = None  # explicitly given budget values only
    merged_id: int = MERGED_ID
    merged_name: str = MERGED_NAME
    num_processes: int = 2
    n_proc_da: int = 0
    jobs: int = 1
    report: Path | None = None
    #: the study archive (docs/study.md, "Archive"); None: recorded, else none
    archive: Path | None = None
    dry_run: bool = False
    measure_iterations: int = 10
    verify: bool = True


def job_threads(jobs: int, cores: int | None = None) -> int:
    """Torch threads per training when ``jobs`` trainings share ``cores`` (default: ``os.cpu_count()``)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


class StudyContext:
    """The study's shared state, built from the options and what ``DIR/state.json`` recorded.

    Options not given take their recorded values (a plain re-run continues the same study); the
    configuration check against the record is :meth:`start`'s. Raises :class:`InputDataError` for
    unknown schemes, bad folds, a merged id that a source already uses, or a vanished source folder."""

    def __init__(self, opts: StudyOptions):
        self.opts = opts
        self.dir = Path(opts.workdir).expanduser().resolve()
        self.dry = opts.dry_run
        self.state = StudyState(self.dir / STATE_FILE)
        self.runner = StudyRunner(self.dir, self.state, self.dry)
        cfg = self.state.config or {}
        given = dict(opts.budget or {})
        self.budget = StudyBudget.from_json({**StudyBudget.from_record(cfg.get("budget", {})), **given}).validate()
        src_dir = opts.sources_dir or (Path(cfg["sources_dir"]) if cfg.get("sources_dir") else REALDATA_DIR)
        self.sources_dir = Path(src_dir).expanduser().resolve()
        if cfg.get("sources") and opts.sources_dir is None and not self.sources_dir.is_dir():
            raise InputDataError(f"The recorded source folder {self.sources_dir} is gone; pass --sources DIR.")
        self.sources: list[Source] = find_sources(self.sources_dir, opts.domains or cfg.get("domains"))
        self.k = len(self.sources)
        self.budget.validate(self.k)
        self.schemes = self._requested_schemes()
        self.later = self._later_schemes()
        self.folds = self._requested_folds()
        self.merged = f"Dataset{opts.merged_id:03d}_{opts.merged_name}"
        clash = [s.name for s in self.sources if s.dataset_id == opts.merged_id]
        if clash:
            raise InputDataError(f"Merged dataset id {opts.merged_id} is the id of source {clash[0]}; use --merged-id.")
        self.raw = self.dir / "nnUNet_raw"
        self.pre = self.dir / "nnUNet_preprocessed"
        self.results = self.dir / "nnUNet_results"
        report = opts.report or self.state.data.get("report")
        self.report_path = Path(report).expanduser().resolve() if report else self.dir / "results.md"
        archive = opts.archive or self.state.data.get("archive")
        self.archive_path = Path(archive).expanduser().resolve() if archive else None
        self._spec: DomainSpec | None = None

    def _requested_schemes(self) -> list[str]:
        requested = list(self.opts.schemes or self.state.data.get("schemes") or DEFAULT_SCHEMES)
        bad = [s for s in requested if s not in SCHEME_TRAINERS]
        if bad:
            raise InputDataError(f"Unknown scheme(s) {bad}; choose from {', '.join(SCHEME_TRAINERS)}.")
        return list(dict.fromkeys(requested))

    def _later_schemes(self) -> list[str]:
        """``--later``, else the recorded list, else :data:`DEFAULT_LATER` (a new study)."""
        given = self.opts.later
        later = list(dict.fromkeys(given if given is not None else self.state.data.get("later", DEFAULT_LATER)))
        bad = [s for s in later if s not in SCHEME_TRAINERS]
        if bad:
            raise InputDataError(f"Unknown scheme(s) {bad} in --later; choose from {', '.join(SCHEME_TRAINERS)}.")
        if INDIVIDUAL in later:
            raise InputDataError("--later names Individual, the reference of every comparison: it is always "
                                 "trained first. Remove it from --later.")
        known = {*self.schemes, *self.state.data.get("schemes", [])}
        missing = [s for s in later if s not in known] if given is not None else []
        if missing:  # a policy for when they are trained; but probably meant to be trained now
            logger.warning("--later names %s, which are not among the schemes to train (%s): they are not trained "
                           "now (add them to --schemes to train them)", missing, " ".join(self.schemes))
        return later

    def _requested_folds(self) -> list[int]:
        given = self.opts.folds if self.opts.folds is not None else self.state.data.get("folds") or DEFAULT_FOLDS
        folds = sorted(set(int(f) for f in given))
        bad = [f for f in folds if not 0 <= f < N_SPLITS]
        if bad:
            raise InputDataError(f"Folds must be 0..{N_SPLITS - 1} (a {N_SPLITS}-fold split), found {bad}.")
        return folds

    # ------------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """What ``state.json`` records on the first run and every later run must agree with."""
        return {
            "sources_dir": str(self.sources_dir),
            "sources": [s.name for s in self.sources],
            "domains": [s.domain for s in self.sources],
            "merged": self.merged,
            "plans_name": PLANS_NAME,
            "budget": self.budget.to_json(),
            "n_splits": N_SPLITS,
            "split_seed": SPLIT_SEED,
        }

    def start(self, stage: str) -> None:
        """Before a stage that writes: the study log, the configuration check, the recorded schemes,
        folds and report path (a dry run writes nothing)."""
        if self.dry:
            return
        setup_study_logging(self.dir)
        self.state.set_config(self.config)
        recorded = self.state.data.get("schemes", [])
        # a --schemes that names every recorded scheme sets the order (the run order of later plain runs);
        # a subset adds its new schemes at the end
        order = [*self.schemes, *recorded] if set(recorded) <= set(self.schemes) else [*recorded, *self.schemes]
        self.state.data["schemes"] = list(dict.fromkeys(order))
        self.state.data["folds"] = sorted(set(self.state.data.get("folds", [])) | set(self.folds))
        self.state.data["later"] = list(self.later)
        self.state.data["report"] = str(self.report_path)
        if self.archive_path is not None:
            self.state.data["archive"] = str(self.archive_path)
        self.state.save()
        logger.info("=== study stage '%s' in %s: schemes %s (later: %s), folds %s, budget %s; code of commit %s "
                    "loaded from %s", stage, self.dir, " ".join(self.schemes), " ".join(self.later) or "none",
                    self.folds, self.budget.to_json(), code_commit() or "unknown", COMMIT_FILE.parent)

    def env(self, train: bool = False) -> dict[str, str]:
        """The environment of the study's commands: nnU-Net's folders inside the work folder, no
        compilation, ``-np`` workers; for training (``train``) also the data-augmentation workers and,
        with ``--jobs`` > 1, each training's share of the cores.

        The budget is not among them: the plans record it (:mod:`~nnunetv2_mtmd.apps.study.plans`). A
        budget, measure flag or thread count inherited from the caller is removed, so that only the
        study decides them."""
        env = nnunet_env(self.dir)
        env["nnUNet_compile"] = "f"
        env["nnUNet_def_n_proc"] = str(self.opts.num_processes)
        for key in (BUDGET_ENV, MEASURE_ENV, THREADS_ENV):
            env.pop(key, None)
        if train:
            env["nnUNet_n_proc_DA"] = str(self.opts.n_proc_da)
            if self.opts.jobs > 1:
                threads = str(job_threads(self.opts.jobs))
                env.update({THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return env

    # -------------------------------------------------------------------------- datasets
    @property
    def datasets(self) -> list[str]:
        """Every dataset the study trains on: the sources (Individual), then the merged one."""
        return [s.name for s in self.sources] + [self.merged]

    @property
    def spec(self) -> DomainSpec:
        """The merged dataset's domains (read once, after the merge)."""
        if self._spec is None:
            self._spec = DomainSpec.from_dataset_json(self.raw / self.merged / "dataset.json")
        return self._spec

    def file_ending(self) -> str:
        return load_json(self.raw / self.merged / "dataset.json").get("file_ending", ".nii.gz")

    def load_splits(self, dataset: str) -> list[Split]:
        return load_json(self.pre / dataset / "splits_final.json")

    def merged_case_ids(self) -> list[str]:
        fe = self.file_ending()
        return sorted(p.name[: -len(fe)] for p in (self.raw / self.merged / "labelsTr").iterdir()
                      if p.name.endswith(fe))

    # ------------------------------------------------------------------------------ models
    def runs(self, fold: int, schemes: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        """``(scheme, dataset, trainer)`` of every model of one fold (of ``schemes``; None: this run's)."""
        out = []
        for s in self.schemes if schemes is None else schemes:
            datasets = [src.name for src in self.sources] if s == INDIVIDUAL else [self.merged]
            out += [(s, d, SCHEME_TRAINERS[s]) for d in datasets]
        return out

    def run_status(self, dataset: str, trainer: str, fold: int) -> str:
        """:func:`training_status` of one model, with the validation cases its split expects."""
        expected = None
        if (self.pre / dataset / "splits_final.json").is_file():
            expected = self.load_splits(dataset)[fold]["val"]
        dj = self.raw / dataset / "dataset.json"
        fe = load_json(dj).get("file_ending", ".nii.gz") if dj.is_file() else ".nii.gz"
        return training_status(fold_folder(self.results, dataset, trainer, fold), expected, fe)

    def fold_complete(self, fold: int, schemes: Sequence[str] | None = None) -> bool:
        return all(self.run_status(d, tr, fold) == "done" for _, d, tr in self.runs(fold, schemes))

    @property
    def eval_schemes(self) -> list[str]:
        """Every scheme ever requested in this work folder (state.json) plus this run's, in table order:
        evaluation and report always cover all of them, on the folds finished by all of them."""
        got = {*self.state.data.get("schemes", []), *self.schemes}
        return [s for s in SCHEME_TRAINERS if s in got]

    @property
    def all_schemes(self) -> list[str]:
        """The schemes of :attr:`eval_schemes` in the order they were requested (state.json, then this
        run's): the order of the training queue."""
        return list(dict.fromkeys([*self.state.data.get("schemes", []), *self.schemes]))

    @property
    def eval_folds(self) -> list[int]:
        return sorted({*self.state.data.get("folds", []), *self.folds})

    def train_order(self, folds: Sequence[int] | None = None,
                    schemes: Sequence[str] | None = None) -> list[tuple[int, str, str, str]]:
        """``(fold, scheme, dataset, trainer)`` of every model of ``folds`` x ``schemes`` (default: this
        run's), in the order the study trains them (docs/study.md, "Run order"): the main schemes
        (all but :attr:`later`) fold by fold, Individual first and the others in the given order; then
        the later schemes, fold by fold."""
        schemes = list(self.schemes if schemes is None else schemes)
        schemes.sort(key=lambda s: s != INDIVIDUAL)  # stable: the given order otherwise
        tiers = ([s for s in schemes if s not in self.later], [s for s in schemes if s in self.later])
        folds = self.folds if folds is None else folds
        return [(f, *run) for tier in tiers if tier for f in folds for run in self.runs(f, tier)]

    def evaluation_plan(self) -> tuple[list[int], list[str]]:
        """The folds and schemes the evaluation covers now (docs/study.md, "Run order").

        Folds: those of :attr:`eval_folds` whose every model of the main schemes (every scheme of
        :attr:`eval_schemes` not in :attr:`later`) is done. Schemes: the main ones, plus each later scheme
        that has finished every one of those folds, so every evaluated scheme is scored on the same
        cases; a later scheme joins (and the folds are evaluated again) when it finishes the last of
        them. Nothing before the merged dataset's splits exist."""
        if not (self.pre / self.merged / "splits_final.json").is_file():
            return [], []
        schemes = self.eval_schemes
        main = [s for s in schemes if s not in self.later] or schemes
        folds = [f for f in self.eval_folds if self.fold_complete(f, main)]
        joined = {s for s in schemes if s not in main and folds and all(self.fold_complete(f, [s]) for f in folds)}
        return folds, [s for s in schemes if s in main or s in joined]

    def complete_folds(self) -> list[int]:
        """The folds the evaluation covers now (:meth:`evaluation_plan`)."""
        return self.evaluation_plan()[0]


def study_command(ctx: StudyContext) -> list[str]:
    """The ``nnUNetv2_mtmd_study`` command line that reproduces the study from scratch (all options explicit)."""
    b = ctx.budget
    cmd = ["python", "-m", "nnunetv2_mtmd.cli.study", "--workdir", str(ctx.dir), "--sources",
           str(ctx.sources_dir), "--domains", *(s.domain for s in ctx.sources), "--folds",
           *map(str, ctx.eval_folds), "--schemes", *ctx.all_schemes, "--later",
           *(s for s in ctx.later if s in ctx.all_schemes)]
    cmd += ["--iterations", str(b.iterations), "--epochs", str(b.epochs), "--val-iterations", str(b.val_iterations),
            "--ae-iterations", str(b.ae_iterations), "--batch-size", str(b.batch_size), "--spacing",
            f"{b.spacing_mm:g}", "--patch-size", str(b.patch_size), "--max-features", str(b.max_features),
            "--base-features", str(b.base_features),
            "--fixed-orientation" if b.fixed_orientation else "--no-fixed-orientation"]
    return [*cmd, "--report", str(ctx.report_path)]
