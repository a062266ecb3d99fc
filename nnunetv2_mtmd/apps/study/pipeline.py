"""The study pipeline: prepare, train, evaluate, report, measure, status (:class:`Study`)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.budget import StudyBudget, coarse_2d_plans, describe_2d, estimate_hours
from nnunetv2_mtmd.apps.study.constants import (
    CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_SCHEMES,
    EVAL_VARIANTS,
    INDIVIDUAL,
    LOG_FILE,
    MEASURE_ENV,
    MERGED_ID,
    MERGED_NAME,
    N_SPLITS,
    PLANS_NAME,
    REALDATA_DIR,
    SCHEME_TRAINERS,
    SPLIT_SEED,
    STAGES,
    STATE_FILE,
    THREADS_ENV,
    StudyError,
)
from nnunetv2_mtmd.apps.study.data import Split, find_sources, individual_splits, unify_individual_prediction
from nnunetv2_mtmd.apps.study.progress import (
    epoch_times,
    epochs_completed,
    fold_folder,
    format_progress,
    measured_step_times,
    train_command,
    training_status,
)
from nnunetv2_mtmd.apps.study.report import build_report, domain_mean_dice, keep_discussion, mark_stale_discussion
from nnunetv2_mtmd.apps.study.state import COMMIT_FILE, StudyState, _now, code_commit, hardware_info
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_output_dir, load_json, save_json

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ study
def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


@dataclass
class StudyOptions:
    """Everything the pipeline needs; see ``nnUNetv2_mtmd_study --help``."""

    workdir: Path
    sources_dir: Path | None = None
    domains: Sequence[str] | None = None
    schemes: Sequence[str] | None = None
    folds: Sequence[int] | None = None
    budget: dict[str, Any] | None = None  # explicitly given budget values only
    merged_id: int = MERGED_ID
    merged_name: str = MERGED_NAME
    num_processes: int = 2
    n_proc_da: int = 0
    jobs: int = 1
    report: Path | None = None
    dry_run: bool = False
    measure_iterations: int = 10
    verify: bool = True


class Study:
    """The pipeline. Construct with :class:`StudyOptions`, then :meth:`run` a stage."""

    def __init__(self, opts: StudyOptions):
        self.opts = opts
        self.dir = Path(opts.workdir).expanduser().resolve()
        self.dry = opts.dry_run
        self.state = StudyState(self.dir / STATE_FILE)
        cfg = self.state.config or {}
        given = dict(opts.budget or {})
        self.budget = StudyBudget.from_json({**StudyBudget.from_record(cfg.get("budget", {})), **given}).validate()
        src_dir = opts.sources_dir or (Path(cfg["sources_dir"]) if cfg.get("sources_dir") else REALDATA_DIR)
        self.sources_dir = Path(src_dir).expanduser().resolve()
        if cfg.get("sources") and opts.sources_dir is None and not self.sources_dir.is_dir():
            raise InputDataError(f"The recorded source folder {self.sources_dir} is gone; pass --sources DIR.")
        self.sources = find_sources(self.sources_dir, opts.domains or cfg.get("domains"))
        self.k = len(self.sources)
        self.budget.validate(self.k)
        requested = list(opts.schemes or self.state.data.get("schemes") or DEFAULT_SCHEMES)
        bad = [s for s in requested if s not in SCHEME_TRAINERS]
        if bad:
            raise InputDataError(f"Unknown scheme(s) {bad}; choose from {', '.join(SCHEME_TRAINERS)}.")
        self.schemes = list(dict.fromkeys(requested))
        self.folds = sorted(set(int(f) for f in (opts.folds if opts.folds is not None else
                                                   self.state.data.get("folds") or DEFAULT_FOLDS)))
        bad_f = [f for f in self.folds if not 0 <= f < N_SPLITS]
        if bad_f:
            raise InputDataError(f"Folds must be 0..{N_SPLITS - 1} (a {N_SPLITS}-fold split), found {bad_f}.")
        self.merged = f"Dataset{opts.merged_id:03d}_{opts.merged_name}"
        clash = [s.name for s in self.sources if s.dataset_id == opts.merged_id]
        if clash:
            raise InputDataError(f"Merged dataset id {opts.merged_id} is the id of source {clash[0]}; use --merged-id.")
        self.raw = self.dir / "nnUNet_raw"
        self.pre = self.dir / "nnUNet_preprocessed"
        self.results = self.dir / "nnUNet_results"
        report = opts.report or self.state.data.get("report")
        self.report_path = Path(report).expanduser().resolve() if report else self.dir / "results.md"
        self._config = {
            "sources_dir": str(self.sources_dir),
            "sources": [s.name for s in self.sources],
            "domains": [s.domain for s in self.sources],
            "merged": self.merged,
            "plans_name": PLANS_NAME,
            "budget": self.budget.to_json(),
            "n_splits": N_SPLITS,
            "split_seed": SPLIT_SEED,
        }
        self._spec: DomainSpec | None = None

    # ----------------------------------------------------------------------------- plumbing
    def _setup_logging(self) -> None:
        if self.dry:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        root = logging.getLogger("nnunetv2_mtmd")
        log_file = str((self.dir / LOG_FILE).resolve())
        # one study log per process: a Study of another work folder created earlier in the same process
        # (tests, notebooks) must not receive this study's lines, nor keep its file open
        for h in [h for h in root.handlers if getattr(h, "_mtmd_study", False)]:
            if getattr(h, "baseFilename", None) != log_file:
                root.removeHandler(h)
                h.close()
        if not any(getattr(h, "_mtmd_study", False) for h in root.handlers):
            h = logging.FileHandler(log_file)
            h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            h._mtmd_study = True  # type: ignore[attr-defined]
            root.addHandler(h)
            root.setLevel(logging.INFO)

    def env(self, train: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        for k, p in (("raw", self.raw), ("preprocessed", self.pre), ("results", self.results)):
            env[f"nnUNet_{k}"] = str(p)
        env["nnUNet_compile"] = "f"
        env["nnUNet_def_n_proc"] = str(self.opts.num_processes)
        env.update(self.budget.env())
        env.pop(MEASURE_ENV, None)
        env.pop("nnUNet_n_proc_DA", None)  # planning crashes with it (DESIGN.md); set for training only
        env.pop(THREADS_ENV, None)
        if train:
            env["nnUNet_n_proc_DA"] = str(self.opts.n_proc_da)
            if self.opts.jobs > 1:
                threads = str(job_threads(self.opts.jobs))
                env.update({THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return env

    def run_cmd(self, step: str, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> float:
        """Run a console script in a subprocess, output appended to ``DIR/logs/<log_name>.txt``."""
        text = shlex.join(cmd)
        if self.dry:
            print(text)
            return 0.0
        log_path = self.dir / "logs" / f"{log_name}.txt"
        logger.info("[%s] $ %s   (output: %s)", step, text, log_path.relative_to(self.dir))
        self.state.add_command(text)
        t0 = time.time()
        with open(log_path, "a") as log:
            log.write(f"\n[{_now()}] $ {text}\n")
            log.flush()
            proc = subprocess.run([_bin(cmd[0]), *cmd[1:]], env=env or self.env(), stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        secs = time.time() - t0
        if proc.returncode != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-15:])
            raise StudyError(f"Step '{step}' failed (exit code {proc.returncode}) after {secs:.0f} s: {text}\n"
                             f"Last lines of {log_path}:\n{tail}")
        logger.info("[%s]   done in %.0f s", step, secs)
        return secs

    def run_inprocess(self, step: str, name: str, main: Callable[[list[str]], int], args: list[str]) -> float:
        """Run one of the plugin's console scripts in this process (same code as the console script)."""
        text = shlex.join([name, *args])
        if self.dry:
            print(text)
            return 0.0
        logger.info("[%s] $ %s", step, text)
        self.state.add_command(text)
        t0 = time.time()
        rc = main(args)
        if rc != 0:
            raise StudyError(f"Step '{step}' failed (exit code {rc}): {text}")
        return time.time() - t0

    def note(self, text: str) -> None:
        """A Python step: printed as a comment in a dry run, logged otherwise."""
        if self.dry:
            print(f"# {text}")
        else:
            logger.info(text)
            self.state.add_command(f"# {text}")

    @property
    def spec(self) -> DomainSpec:
        if self._spec is None:
            self._spec = DomainSpec.from_dataset_json(self.raw / self.merged / "dataset.json")
        return self._spec

    def file_ending(self) -> str:
        return load_json(self.raw / self.merged / "dataset.json").get("file_ending", ".nii.gz")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One study process per work folder."""
        if self.dry:
            yield
            return
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "study.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                f.seek(0)
                raise StudyError(f"Another study process is running in {self.dir} (pid {f.read().strip() or '?'}); "
                                 "wait for it or stop it first.") from e
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def progress(self) -> list[dict[str, Any]]:
        """One row per model of every requested fold and scheme (see :func:`format_progress`); reads
        files only, so it works while the study runs."""
        rows = []
        for fold in self.eval_folds:
            for scheme, dataset, trainer in self.runs(fold, self.eval_schemes):
                k = 1 if scheme == INDIVIDUAL else self.k
                per_epoch = self.budget.iterations_per_epoch(k)
                fd = fold_folder(self.results, dataset, trainer, fold)
                status = self.run_status(dataset, trainer, fold)
                done_ep = epochs_completed(fd, self.budget.epochs)
                times = epoch_times(fd)
                state = {"done": "done", "validate": "final validation missing", "new": "not started"}.get(
                    status, f"training (epoch {done_ep + 1})")
                rows.append({"fold": fold, "scheme": scheme, "dataset": dataset, "state": state,
                             "epochs_done": done_ep, "epochs": self.budget.epochs,
                             "iterations_left": (self.budget.epochs - done_ep) * per_epoch,
                             "s_per_it": float(np.median(times)) / per_epoch if times else None})
        return rows

    # --------------------------------------------------------------------------------- run
    def run(self, stage: str = "all") -> None:
        if stage not in STAGES:
            raise InputDataError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
        if stage == "status":  # read-only: no lock, so it works beside a running study
            if self.state.config is None:
                raise InputDataError(f"No study in {self.dir} yet (no state.json with a configuration); start one "
                                     "with --stage all.")
            print(format_progress(self.progress(), self.opts.jobs))
            return
        with self.lock():
            self._setup_logging()
            if not self.dry:
                self.state.set_config(self._config)
                self.state.data["schemes"] = list(dict.fromkeys([*self.state.data.get("schemes", []), *self.schemes]))
                self.state.data["folds"] = sorted(set(self.state.data.get("folds", [])) | set(self.folds))
                self.state.data["report"] = str(self.report_path)
                self.state.save()
                logger.info("=== study stage '%s' in %s: schemes %s, folds %s, budget %s; code of commit %s "
                            "loaded from %s", stage, self.dir, " ".join(self.schemes), self.folds,
                            self.budget.to_json(), code_commit() or "unknown", COMMIT_FILE.parent)
            if stage in ("all", "prepare", "measure"):
                self.prepare()
            if stage == "measure":
                self.measure()
                return
            if stage in ("all", "train"):
                self.train(evaluate_as_we_go=stage == "all")
            if stage in ("all", "evaluate"):
                self.evaluate()
            if stage in ("all", "report"):
                self.report()

    # ----------------------------------------------------------------------------- prepare
    def prepare(self) -> None:
        st = self.state
        srcs = self.sources
        if not st.is_done("copy"):
            for s in srcs:
                dst = self.raw / s.name
                self.note(f"copy {s.folder} -> {dst}")
                if not self.dry:
                    with atomic_output_dir(dst, overwrite=True) as tmp:
                        shutil.copytree(s.folder, tmp, dirs_exist_ok=True)
            if not self.dry:
                st.mark_done("copy")
        if not st.is_done("merge"):
            ch = load_json(srcs[0].folder / "dataset.json")["channel_names"]
            names = [ch[str(i)] for i in range(len(ch))]
            cmd = ["nnUNetv2_mtmd_merge", "-d", *(str(self.raw / s.name) for s in srcs), "--domains",
                   *(s.domain for s in srcs), "-o", str(self.opts.merged_id), "-n", self.opts.merged_name,
                   "--channel_names", *names, "--drop_duplicates", "--overwrite"]
            self.run_cmd("merge", cmd, "prepare")
            if not self.dry:
                self._drop_cases_missing_from_merge()
                st.mark_done("merge")
        ids = [str(s.dataset_id) for s in srcs] + [str(self.opts.merged_id)]
        np_ = str(self.opts.num_processes)
        if not st.is_done("fingerprint"):
            self.run_cmd("fingerprint", ["nnUNetv2_extract_fingerprint", "-d", *ids, "-np", np_]
                         + (["--verify_dataset_integrity"] if self.opts.verify else []), "prepare")
            if not self.dry:
                st.mark_done("fingerprint")
        if not st.is_done("plan"):
            self.run_cmd("plan", ["nnUNetv2_plan_experiment", "-d", *ids[:-1]], "prepare")
            self.run_cmd("plan", ["nnUNetv2_plan_experiment", "-d", ids[-1], "-pl", "nnUNetPlannerMTMD"], "prepare")
            if not self.dry:
                st.mark_done("plan")
        if not st.is_done("plans_variant"):
            self.note(f"write {PLANS_NAME}.json next to every nnUNetPlans.json: 2d with in-plane spacing "
                      f"{self.budget.spacing_mm} mm, patch {self.budget.patch_size}^2, batch {self.budget.batch_size}, "
                      f"{self.budget.base_features} features in the first stage, at most {self.budget.max_features}")
            if not self.dry:
                planned = {}
                for name in [s.name for s in srcs] + [self.merged]:
                    src = load_json(self.pre / name / "nnUNetPlans.json")
                    variant = coarse_2d_plans(src, self.budget)
                    save_json(variant, self.pre / name / f"{PLANS_NAME}.json")
                    planned[name] = {"planned": describe_2d(src), "study": describe_2d(variant)}
                    logger.info("  %s: planned %s -> study %s", name, planned[name]["planned"],
                                planned[name]["study"])
                st.mark_done("plans_variant", plans=planned)
        if not st.is_done("preprocess"):
            self.run_cmd("preprocess", ["nnUNetv2_preprocess", "-d", *ids, "-plans_name", PLANS_NAME, "-c",
                                        CONFIGURATION, "-np", np_], "prepare")
            if not self.dry:
                st.mark_done("preprocess")
        if not st.is_done("splits"):
            self.note(f"write a domain-stratified {N_SPLITS}-fold split of {self.merged} (seed {SPLIT_SEED}) and "
                      "the same held-out cases for every source dataset")
            if not self.dry:
                self.write_splits()
                st.mark_done("splits")

    def _drop_cases_missing_from_merge(self) -> None:
        """Remove from the Individual copies the cases the merge dropped (exact duplicates), so that
        both sides train and evaluate on the same cases."""
        fe = self.file_ending()
        merged = {p.name[: -len(fe)] for p in (self.raw / self.merged / "labelsTr").iterdir()
                  if p.name.endswith(fe)}
        for s in self.sources:
            dom = self.spec.by_name(s.domain)
            folder = self.raw / s.name
            labels = sorted(p.name[: -len(fe)] for p in (folder / "labelsTr").iterdir() if p.name.endswith(fe))
            dropped = [c for c in labels if dom.case_id(c) not in merged]
            for c in dropped:
                logger.warning("  %s: case %s was dropped by the merge (duplicate image); removed from the copy too",
                               s.name, c)
                (folder / "labelsTr" / f"{c}{fe}").unlink()
                for f in (folder / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{fe}"):
                    f.unlink()
            if dropped:
                dj = load_json(folder / "dataset.json")
                dj["numTraining"] = len(labels) - len(dropped)
                save_json(dj, folder / "dataset.json")

    def merged_case_ids(self) -> list[str]:
        fe = self.file_ending()
        return sorted(p.name[: -len(fe)] for p in (self.raw / self.merged / "labelsTr").iterdir()
                      if p.name.endswith(fe))

    def write_splits(self) -> None:
        from nnunetv2_mtmd.evaluation.splits import describe_splits, domain_stratified_kfold, write_splits

        splits = domain_stratified_kfold(self.merged_case_ids(), self.spec, N_SPLITS, SPLIT_SEED)
        write_splits(splits, self.pre / self.merged / "splits_final.json")
        logger.info("  merged split:\n%s", describe_splits(splits, self.spec))
        for dom_name, sp in individual_splits(splits, self.spec).items():
            write_splits(sp, self.pre / self.spec.by_name(dom_name).source_dataset / "splits_final.json")

    def load_splits(self, dataset: str) -> list[Split]:
        return load_json(self.pre / dataset / "splits_final.json")

    # ------------------------------------------------------------------------------- train
    def runs(self, fold: int, schemes: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        """``(scheme, dataset, trainer)`` of every model of one fold."""
        out = []
        for s in schemes or self.schemes:
            datasets = [src.name for src in self.sources] if s == INDIVIDUAL else [self.merged]
            out += [(s, d, SCHEME_TRAINERS[s]) for d in datasets]
        return out

    def run_status(self, dataset: str, trainer: str, fold: int) -> str:
        expected = None
        split_file = self.pre / dataset / "splits_final.json"
        if split_file.is_file():
            expected = self.load_splits(dataset)[fold]["val"]
        fe = load_json(self.raw / dataset / "dataset.json").get("file_ending", ".nii.gz") \
            if (self.raw / dataset / "dataset.json").is_file() else ".nii.gz"
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
    def eval_folds(self) -> list[int]:
        return sorted({*self.state.data.get("folds", []), *self.folds})

    def _train_one(self, fold: int, scheme: str, dataset: str, trainer: str, status: str) -> None:
        key = f"train:fold{fold}:{scheme}:{dataset}"
        if not self.dry:
            logger.info("[train] fold %d %s on %s: %s", fold, scheme, dataset,
                        {"new": "starting", "resume": "continuing from a checkpoint (--c)",
                         "validate": "running the final validation (--val)"}[status])
        secs = self.run_cmd(f"train fold {fold} {scheme} {dataset}", train_command(dataset, fold, trainer, status),
                            f"train_fold{fold}_{scheme}_{dataset}", self.env(train=True))
        if not self.dry:
            self.state.add_seconds(key, secs)
            if self.run_status(dataset, trainer, fold) != "done":
                raise StudyError(f"nnUNetv2_train for fold {fold} {scheme} on {dataset} ended without a "
                                 "complete validation folder; see the log in DIR/logs.")
            self.state.mark_done(key, seconds=self.state.data["seconds"][key])

    def pending_trainings(self) -> list[tuple[int, str, str, str, str]]:
        """``(fold, scheme, dataset, trainer, status)`` of every model still to train, in study order;
        models already done are marked done in the state on the way."""
        out = []
        for fold in self.folds:
            for scheme, dataset, trainer in self.runs(fold):
                status = self.run_status(dataset, trainer, fold)
                if status == "done":
                    key = f"train:fold{fold}:{scheme}:{dataset}"
                    if not self.dry and not self.state.is_done(key):
                        self.state.mark_done(key)
                    logger.info("[train] fold %d %s on %s: done (skipped)", fold, scheme, dataset)
                    continue
                out.append((fold, scheme, dataset, trainer, status))
        return out

    def train(self, evaluate_as_we_go: bool = False) -> None:
        """Train every pending model; with ``jobs > 1`` that many at once (in study order, each with
        ``cores // jobs`` torch threads). A fold is evaluated and reported as soon as it is complete."""
        pending = self.pending_trainings()
        evaluated: set[int] = set()

        def evaluate_complete_folds() -> None:
            if not evaluate_as_we_go or self.dry:
                return
            for fold in self.folds:
                if fold not in evaluated and self.fold_complete(fold):
                    evaluated.add(fold)
                    self.evaluate()
                    self.report()

        if self.opts.jobs <= 1 or self.dry:
            evaluate_complete_folds()  # a fold completed before this run (stopped during its evaluation)
            for item in pending:
                self._train_one(*item)
                evaluate_complete_folds()
            evaluate_complete_folds()
            return
        logger.info("[train] %d trainings at once, %d torch thread(s) each", self.opts.jobs,
                    job_threads(self.opts.jobs))
        with ThreadPoolExecutor(max_workers=self.opts.jobs) as pool:
            futures = [pool.submit(self._train_one, *item) for item in pending]
            try:
                # a fold completed before this run (stopped during its evaluation): now, while the
                # workers train, not when the next training ends
                evaluate_complete_folds()
                for fut in as_completed(futures):
                    fut.result()
                    evaluate_complete_folds()
            except BaseException:
                # models already running continue to their end (each checkpoints every epoch anyway)
                for f in futures:
                    f.cancel()
                raise
        evaluate_complete_folds()

    # ---------------------------------------------------------------------------- evaluate
    def complete_folds(self) -> list[int]:
        return [f for f in self.eval_folds if (self.pre / self.merged / "splits_final.json").is_file()
                and self.fold_complete(f, self.eval_schemes)]

    def gather(self, scheme: str, fold: int, out: Path) -> int:
        """Held-out predictions of ``scheme``'s models of ``fold`` into ``out`` (unified labels, merged case
        ids). Returns the number of cases."""
        fe = self.file_ending()
        n = 0
        with atomic_output_dir(out, overwrite=True) as tmp:
            for _, dataset, trainer in self.runs(fold, [scheme]):
                val = fold_folder(self.results, dataset, trainer, fold) / "validation"
                for p in sorted(p for p in val.iterdir() if p.name.endswith(fe)):
                    if scheme == INDIVIDUAL:
                        dom = next(d for d in self.spec.domains if d.source_dataset == dataset)
                        unify_individual_prediction(p, tmp / f"{dom.case_id(p.name[: -len(fe)])}{fe}", dom)
                    else:
                        shutil.copyfile(p, tmp / p.name)
                    n += 1
        return n

    def best_multi_domain_scheme(self) -> str | None:
        """The multi-domain scheme with the highest mean over domains of the domain-mean Dice (raw)."""
        best, best_val = None, -1.0
        for s in self.eval_schemes:
            if s == INDIVIDUAL:
                continue
            summ = self.dir / "evaluation" / s / "raw" / "summary.json"
            if not summ.is_file():
                continue
            val = domain_mean_dice(load_json(summ))
            if val is not None and val > best_val:
                best, best_val = s, val
        return best

    def evaluate(self) -> None:
        from nnunetv2_mtmd.cli import compare as compare_cli
        from nnunetv2_mtmd.cli import evaluate as evaluate_cli
        from nnunetv2_mtmd.cli import postprocess as postprocess_cli

        folds = self.complete_folds() if not self.dry else self.eval_folds
        schemes = self.eval_schemes
        if not folds:
            logger.info("[evaluate] no fold has finished training for every scheme yet: nothing to evaluate.")
            return
        # "parts": post-processing keeps as many components as a structure has parts (evaluations made
        # before, with one component per structure, are redone)
        key = f"evaluate:parts:folds{','.join(map(str, folds))}:{','.join(schemes)}"
        if self.state.is_done(key):
            logger.info("[evaluate] folds %s already evaluated (skipped)", folds)
            return
        logger.info("[evaluate] folds %s, schemes %s", folds, schemes)
        merged_dir = str(self.raw / self.merged)
        ref = str(self.raw / self.merged / "labelsTr")
        np_ = str(self.opts.num_processes)
        ev = self.dir / "evaluation"
        components = {fold: self.fold_components(fold) for fold in folds}
        self.reference_parts(folds, components)
        by_fold = self.dir / "predictions_by_fold"
        for s in schemes:
            pred, pp = self.dir / "predictions" / s, self.dir / "predictions_postprocessed" / s
            raw_f = {f: by_fold / s / f"fold_{f}" for f in folds}
            pp_f = {f: by_fold / f"{s}_postprocessed" / f"fold_{f}" for f in folds}
            self.note(f"gather the held-out predictions of {s} of each fold {folds} into {by_fold / s}, all in {pred}"
                      + (" (labels remapped to the unified space, case ids prefixed)" if s == INDIVIDUAL else ""))
            if not self.dry:
                for f in folds:
                    self.gather(s, f, raw_f[f])
                logger.info("  %s: %d held-out predictions", s, union_folders(raw_f, pred))
            # post-processed fold by fold: a fold's parts are counted in its own training labels
            for f in folds:
                self.run_inprocess("postprocess", "nnUNetv2_mtmd_postprocess", postprocess_cli.main,
                                   ["-i", str(raw_f[f]), "-o", str(pp_f[f]), "-d", merged_dir, "-np", np_,
                                    "--components", str(components[f]), "--overwrite"])
            if not self.dry:
                union_folders(pp_f, pp)
            for variant, folder in (("raw", pred), ("postprocessed", pp)):
                self.run_inprocess("evaluate", "nnUNetv2_mtmd_evaluate", evaluate_cli.main,
                                   ["-ref", ref, "-pred", str(folder), "-d", merged_dir,
                                    "-o", str(ev / s / variant), "-np", np_, "--allow-missing", "--overwrite"])
        if len(schemes) > 1:  # Individual (if run) is first: the reference of the KS tests
            for variant in EVAL_VARIANTS:
                self.run_inprocess("compare", "nnUNetv2_mtmd_compare", compare_cli.main,
                                   [*(str(ev / s / variant) for s in schemes), "-o", str(ev / f"compare_{variant}"),
                                    "--names", *schemes, "--overwrite"])
        best = self.best_multi_domain_scheme() if not self.dry else next(
            (s for s in schemes if s != INDIVIDUAL), None)
        # every multi-domain scheme, so that the report can set the schemes side by side (the paper's
        # Table 5): how far apart the domains' embeddings are is what MSC changes, not the Dice
        emb_dirs = self.embeddings(folds[0], [s for s in schemes if s != INDIVIDUAL])
        if not self.dry:
            save_json({"folds": folds, "schemes": schemes, "best_multi_domain": best,
                       "embeddings": str(emb_dirs[best]) if best else None,
                       "embeddings_by_scheme": {s: str(e) for s, e in emb_dirs.items()}, "at": _now()},
                      ev / "evaluated.json")
            self.state.mark_done(key)

    def embeddings(self, fold: int, schemes: Sequence[str]) -> dict[str, Path]:
        """``nnUNetv2_mtmd_embeddings`` of each scheme's model of ``fold`` into ``DIR/embeddings/<scheme>_foldX``.

        Every evaluation analyses the first evaluated fold, so without this check each later fold's
        evaluation would recompute the same embeddings (minutes per scheme on a CPU). They are reused
        while the model's ``checkpoint_final.pth`` is the one they were computed from."""
        out = {}
        for s in schemes:
            emb_dir = out[s] = self.dir / "embeddings" / f"{s}_fold{fold}"
            ckpt = fold_folder(self.results, self.merged, SCHEME_TRAINERS[s], fold) / "checkpoint_final.pth"
            key = f"embeddings:{s}:fold{fold}:{ckpt.stat().st_mtime_ns if ckpt.is_file() else 'none'}"
            if self.state.is_done(key) and (emb_dir / "similarity.csv").is_file():
                logger.info("[embeddings] %s, fold %d: computed before from the same checkpoint (reused)", s, fold)
                continue
            self.run_cmd("embeddings", ["nnUNetv2_mtmd_embeddings", "-d", self.merged, "-c", CONFIGURATION,
                                        "-tr", SCHEME_TRAINERS[s], "-p", PLANS_NAME, "-f", str(fold),
                                        "-o", str(emb_dir), "-device", "cpu", "--overwrite", "--no_progress"],
                         "embeddings")
            if not self.dry:
                self.state.mark_done(key)
        return out

    def fold_components(self, fold: int) -> Path:
        """The number of parts of every structure, counted in the training labels of ``fold`` only (the
        held-out cases must not inform their own post-processing), as ``DIR/evaluation/components_foldX.json``."""
        from nnunetv2_mtmd.evaluation.postprocess import expected_components, structure_names

        out = self.dir / "evaluation" / f"components_fold{fold}.json"
        self.note(f"count the parts of every structure in the training labels of fold {fold} into {out}")
        if self.dry:
            return out
        fe = self.file_ending()
        train = self.load_splits(self.merged)[fold]["train"]
        files = [self.raw / self.merged / "labelsTr" / f"{c}{fe}" for c in train]
        comp = expected_components(files, self.spec, fe)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_json({name: comp[lab] for name, lab in structure_names(self.spec).items()}, out)
        return out

    def reference_parts(self, folds: Sequence[int], components: Mapping[int, Path]) -> Path:
        """The held-out reference structures that the post-processing (with each fold's ``components``
        file) would cut, as ``DIR/evaluation/reference_parts.json`` (:func:`parts_beyond_kept`)."""
        from nnunetv2_mtmd.evaluation.postprocess import parts_beyond_kept, read_components

        out = self.dir / "evaluation" / "reference_parts.json"
        self.note(f"list the held-out reference structures with more parts than the post-processing keeps into {out}")
        if self.dry:
            return out
        fe, splits = self.file_ending(), self.load_splits(self.merged)
        n, rows = 0, []
        for f in folds:
            files = [self.raw / self.merged / "labelsTr" / f"{c}{fe}" for c in splits[f]["val"]]
            m, cut = parts_beyond_kept(files, self.spec, fe, read_components(components[f], self.spec))
            n += m
            rows += [{"fold": f, **r} for r in cut]
        save_json({"folds": list(folds), "structures": n, "cut": rows}, out)
        return out

    # ------------------------------------------------------------------------------ report
    def report(self) -> None:
        ev_file = self.dir / "evaluation" / "evaluated.json"
        if self.dry:
            self.note(f"write {self.report_path} from {self.dir / 'evaluation'}")
            return
        if not ev_file.is_file():
            logger.info("[report] nothing evaluated yet: no report written.")
            return
        text = build_report(self, load_json(ev_file))
        if self.report_path.is_file():
            text = keep_discussion(text, self.report_path.read_text(encoding="utf-8"))
        text, stray = mark_stale_discussion(text)
        if stray:
            logger.warning("[report] the discussion of %s quotes numbers that appear nowhere else in the report "
                           "(stale after new folds, or typed by hand?): %s", self.report_path, ", ".join(stray))
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.report_path.with_name(f".{self.report_path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.report_path)
        logger.info("[report] wrote %s", self.report_path)

    # ----------------------------------------------------------------------------- measure
    def measure(self) -> dict[str, Any]:
        """Time every trainer on fold 0: 2 epochs of ``measure_iterations`` (times K for multi-domain)
        iterations each; the study trainers log the median wall-clock and process CPU time of
        ``train_step`` per epoch (data loading excluded), the second epoch is used. No checkpoints, no
        final validation; the runs go to ``DIR/measure`` and do not touch the study's results. Writes
        ``DIR/measure/speed.json`` and prints the expected hours of the budget."""
        n = self.opts.measure_iterations
        mb = replace(self.budget, iterations=2 * n, epochs=2, ae_iterations=min(self.budget.ae_iterations, 2 * n))
        results = self.dir / "measure" / "nnUNet_results"
        out: dict[str, Any] = {"iterations_per_epoch_individual": n, "budget": mb.to_json(), "runs": {}}
        for scheme, dataset, trainer in self.runs(0):
            env = {**self.env(train=True), **mb.env(), MEASURE_ENV: "1", "nnUNet_results": str(results)}
            fd = fold_folder(results, dataset, trainer, 0)
            if fd.exists() and not self.dry:
                shutil.rmtree(fd)
            secs = self.run_cmd(f"measure {scheme} {dataset}",
                                [*train_command(dataset, 0, trainer, "new"), "--disable_checkpointing"],
                                f"measure_{scheme}_{dataset}", env)
            if self.dry:
                continue
            steps = measured_step_times(fd)
            if not steps:
                raise StudyError(f"No 'Study measure' lines in the training log of {fd}; see DIR/logs.")
            last = steps[-1]
            out["runs"].setdefault(scheme, {})[dataset] = {**last, "epoch_seconds": epoch_times(fd),
                                                          "run_seconds": secs}
            logger.info("[measure] %s on %s: train_step %.2f s wall, %.2f s CPU (load average %.1f)", scheme,
                        dataset, last["wall"], last["cpu"], last["load"])
        if self.dry:
            return out
        nproc = os.cpu_count() or 1
        wall = {s: float(np.mean([v["wall"] for v in d.values()])) for s, d in out["runs"].items()}
        cpu = {s: float(np.mean([v["cpu"] for v in d.values()])) for s, d in out["runs"].items()}
        out.update({
            "seconds_per_iteration_wall": wall,
            "cpu_seconds_per_iteration": cpu,
            "expected_hours_at_measured_load": estimate_hours(self.budget, wall, self.k, len(self.folds)),
            "expected_hours_alone_best": estimate_hours(self.budget, {s: c / nproc for s, c in cpu.items()},
                                                        self.k, len(self.folds)),
            "expected_hours_alone_worst": estimate_hours(self.budget, cpu, self.k, len(self.folds)),
            "hardware": hardware_info(),
        })
        save_json(out, self.dir / "measure" / "speed.json")
        b = self.budget
        lines = [f"train_step time per iteration (batch {b.batch_size}, patch {b.patch_size}^2 at {b.spacing_mm} mm, "
                 f"median of {n} (x K) iterations) and expected training hours of I = {b.iterations} for "
                 f"{len(self.folds)} fold(s):",
                 f"  {'scheme':14s} {'wall s/it':>9s} {'CPU s/it':>9s} {'h (load)':>9s} {'h alone':>15s}"]
        for s in wall:
            lo = out["expected_hours_alone_best"][s]
            hi = out["expected_hours_alone_worst"][s]
            lines.append(f"  {s:14s} {wall[s]:9.2f} {cpu[s]:9.2f} {out['expected_hours_at_measured_load'][s]:9.1f} "
                         f"{lo:6.1f} - {hi:6.1f}")
        tot = {k: out[f"expected_hours_{k}"]["total"] for k in ("at_measured_load", "alone_best", "alone_worst")}
        lines.append(f"  {'total':14s} {'':9s} {'':9s} {tot['at_measured_load']:9.1f} "
                     f"{tot['alone_best']:6.1f} - {tot['alone_worst']:6.1f}")
        lines.append(f"'h (load)': at the load average measured ({hardware_info().get('load_average')} now); "
                     f"'h alone': CPU time / {nproc} cores (perfect parallelism) to CPU time on one core. "
                     "Training iterations only: add data loading stalls, per-epoch validation, the final "
                     "validations and the MJAP autoencoder phases.")
        logger.info("\n".join(lines))
        return out


def union_folders(folders: Mapping[int, Path], out: Path) -> int:
    """Every file of the per-fold ``folders`` into ``out`` (all or nothing); a JSON file that several folds
    have (``postprocessing_mtmd.json``) is kept once per fold as ``<stem>_fold<i>.json``. A case file in two
    folds is an error (their validation sets must not overlap). Returns the number of non-JSON files."""
    n = 0
    with atomic_output_dir(out, overwrite=True) as tmp:
        for fold, folder in folders.items():
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    continue
                is_json = f.suffix == ".json"
                target = tmp / (f"{f.stem}_fold{fold}.json" if is_json else f.name)
                if target.exists():
                    raise StudyError(f"{f.name} is predicted by two folds: the folds' validation sets overlap; "
                                     "the splits are inconsistent.")
                shutil.copyfile(f, target)
                n += not is_json
    return n


def job_threads(jobs: int, cores: int | None = None) -> int:
    """Torch threads per training when ``jobs`` trainings share ``cores`` (default: ``os.cpu_count()``)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, jobs))
