"""``--stage evaluate``: the held-out predictions of every scheme over the finished folds, post-processed
fold by fold, evaluated with and without post-processing, compared, and the embeddings of every
multi-domain scheme's model of the first fold."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunetv2_mtmd.apps.study.constants import (
    CONFIGURATION,
    EVAL_VARIANTS,
    INDIVIDUAL,
    PLANS_NAME,
    SCHEME_TRAINERS,
    StudyError,
)
from nnunetv2_mtmd.apps.study.context import StudyContext
from nnunetv2_mtmd.apps.study.data import unify_individual_prediction
from nnunetv2_mtmd.apps.study.fingerprint import model_key
from nnunetv2_mtmd.apps.study.progress import fold_folder
from nnunetv2_mtmd.apps.study.report_tables import domain_mean_dice
from nnunetv2_mtmd.apps.study.state import _now
from nnunetv2_mtmd.io import atomic_output_dir, atomic_save_json, load_json

logger = logging.getLogger(__name__)


def union_folders(folders: Mapping[int | str, Path], out: Path) -> int:
    """Every file of the per-fold (or per-model) ``folders`` into ``out`` (all or nothing); a JSON file that
    several of them have (``postprocessing_mtmd.json``) is kept once per folder as ``<stem>_fold<i>.json``
    (int key ``i``) or ``<stem>_<key>.json`` (str key). A case file in two folders is an error (their
    validation sets must not overlap). Returns the number of non-JSON files."""
    n = 0
    with atomic_output_dir(out, overwrite=True) as tmp:
        for fold, folder in folders.items():
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    continue
                is_json = f.suffix == ".json"
                tag = f"fold{fold}" if isinstance(fold, int) else fold
                target = tmp / (f"{f.stem}_{tag}.json" if is_json else f.name)
                if target.exists():
                    raise StudyError(f"{f.name} is predicted by two folds: the folds' validation sets overlap; "
                                     "the splits are inconsistent.")
                shutil.copyfile(f, target)
                n += not is_json
    return n


class EvaluateStage:
    """Evaluates what :meth:`StudyContext.evaluation_plan` covers: the main schemes on the folds all of
    them have finished, and every later scheme that has finished those folds too. The result is recorded
    per set of folds and schemes, so an evaluation is not repeated."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx
        self.ev = ctx.dir / "evaluation"
        # the archive evaluates finished models from the training workers' threads (--jobs > 1)
        self.lock = threading.RLock()

    def run(self) -> None:
        with self.lock:
            self._run()

    def _run(self) -> None:
        ctx = self.ctx
        folds, schemes = ctx.evaluation_plan() if not ctx.dry else (ctx.eval_folds, ctx.eval_schemes)
        if not folds:
            logger.info("[evaluate] no fold has finished training for every main scheme yet: nothing to evaluate.")
            return
        waiting = [s for s in ctx.eval_schemes if s not in schemes]
        if waiting:
            logger.info("[evaluate] later scheme(s) %s join once they have finished folds %s", waiting, folds)
        # "parts": post-processing keeps as many components as a structure has parts (evaluations made
        # before, with one component per structure, are redone)
        key = f"evaluate:parts:folds{','.join(map(str, folds))}:{','.join(schemes)}"
        if ctx.state.is_done(key):
            logger.info("[evaluate] folds %s already evaluated (skipped)", folds)
            return
        logger.info("[evaluate] folds %s, schemes %s", folds, schemes)
        components = {fold: self.fold_components(fold) for fold in folds}
        self.reference_parts(folds, components)
        for s in schemes:
            self.evaluate_scheme(s, folds, components)
        if len(schemes) > 1:  # Individual (if run) is first: the reference of the KS tests
            for variant in EVAL_VARIANTS:
                self.compare(schemes, variant)
        best = self.best_multi_domain_scheme(schemes) if not ctx.dry else next(
            (s for s in schemes if s != INDIVIDUAL), None)
        # every multi-domain scheme, so that the report can set the schemes side by side (the paper's
        # Table 5): how far apart the domains' embeddings are is what MSC changes, not the Dice
        emb_dirs = self.embeddings(folds[0], [s for s in schemes if s != INDIVIDUAL])
        if not ctx.dry:
            atomic_save_json({"folds": folds, "schemes": schemes, "best_multi_domain": best,
                              "embeddings": str(emb_dirs[best]) if best else None,
                              "embeddings_by_scheme": {s: str(e) for s, e in emb_dirs.items()}, "at": _now()},
                             self.ev / "evaluated.json")
            ctx.state.mark_done(key)

    def evaluate_scheme(self, scheme: str, folds: Sequence[int], components: Mapping[int, Path]) -> None:
        """Evaluate (raw and post-processed) each of the scheme's models of ``folds`` on its own held-out
        cases (:meth:`evaluate_model`, reused while the model is the same), then pool them into
        ``evaluation/<scheme>/<variant>`` (:func:`~nnunetv2_mtmd.evaluation.evaluate.pool_evaluations`:
        the same numbers as evaluating the union of the predictions). The predictions of the models that
        have them (not those restored from an archive) are also gathered into ``predictions/<scheme>``
        and ``predictions_postprocessed/<scheme>``."""
        ctx = self.ctx
        models = [(f, d) for f in folds for _, d, _ in ctx.runs(f, [scheme])]
        per_model = {(f, d): self.evaluate_model(scheme, f, d, components[f]) for f, d in models}
        if ctx.dry:
            return
        from nnunetv2_mtmd.evaluation.evaluate import pool_evaluations

        for variant, name in (("raw", "predictions"), ("postprocessed", "predictions_postprocessed")):
            pool_evaluations([per_model[m] / variant for m in models], self.ev / scheme / variant, ctx.spec,
                             overwrite=True)
            live = {self._tag(scheme, f, d): self._pred_dir(scheme, f, d, variant) for f, d in models}
            live = {k: v for k, v in live.items() if v.is_dir()}
            if live:
                n = union_folders(live, ctx.dir / name / scheme)
                logger.info("  %s: %d held-out predictions in %s", scheme, n, ctx.dir / name / scheme)
        logger.info("  %s: pooled the evaluations of %d model(s) of folds %s", scheme, len(models), list(folds))

    @staticmethod
    def _tag(scheme: str, fold: int, dataset: str) -> int | str:
        """Key of a model's folder in :func:`union_folders`: the fold, or fold and dataset for Individual."""
        return f"fold{fold}_{dataset}" if scheme == INDIVIDUAL else fold

    def _pred_dir(self, scheme: str, fold: int, dataset: str, variant: str) -> Path:
        suffix = "_postprocessed" if variant == "postprocessed" else ""
        return self.ctx.dir / "predictions_by_model" / f"{scheme}{suffix}" / f"fold_{fold}" / dataset

    def model_evaluation_dir(self, scheme: str, fold: int, dataset: str) -> Path:
        """``evaluation/by_model/<scheme>/fold_<f>/<dataset>``: one model's ``raw`` and ``postprocessed``
        evaluations of its held-out cases."""
        return self.ev / "by_model" / scheme / f"fold_{fold}" / dataset

    def evaluate_model(self, scheme: str, fold: int, dataset: str, components: Path | None = None) -> Path:
        """Gather one model's held-out predictions (unified labels, merged case ids), post-process them
        with ``components`` (the fold's training labels' part counts) and evaluate both into
        :meth:`model_evaluation_dir`. Reused while the model's ``done`` record in the state is the one
        it was computed from (a retrained model is evaluated again); a model restored from an archive
        brings its evaluation along. Returns the folder."""
        ctx = self.ctx
        out = self.model_evaluation_dir(scheme, fold, dataset)
        mkey = model_key(fold, scheme, dataset)
        key = f"evaluate_model:{mkey}"
        stamp = (ctx.state.data["done"].get(mkey) or {}).get("at")
        rec = ctx.state.data["done"].get(key) or {}
        if (not ctx.dry and rec.get("model_done_at") == stamp
                and all((out / v / "metrics.csv").is_file() for v in EVAL_VARIANTS)):
            return out
        if components is None:
            components = self.fold_components(fold)
        raw, pp = self._pred_dir(scheme, fold, dataset, "raw"), self._pred_dir(scheme, fold, dataset, "postprocessed")
        remap = " (labels remapped to the unified space, case ids prefixed)" if scheme == INDIVIDUAL else ""
        ctx.runner.note(f"gather the held-out predictions of fold {fold} {scheme} on {dataset} into {raw}{remap}")
        if not ctx.dry:
            if ctx.run_status(dataset, SCHEME_TRAINERS[scheme], fold) != "done" or not self._has_validation(
                    scheme, fold, dataset):
                raise StudyError(f"fold {fold} {scheme} on {dataset} has no held-out predictions to evaluate "
                                 f"(and no evaluation restored from an archive in {out}); train it first.")
            self.gather(scheme, fold, dataset, raw)
        self.postprocess(raw, pp, components)
        for variant, folder in (("raw", raw), ("postprocessed", pp)):
            self.evaluate(folder, out / variant)
        if not ctx.dry:
            ctx.state.mark_done(key, model_done_at=stamp)
        return out

    def _has_validation(self, scheme: str, fold: int, dataset: str) -> bool:
        return (fold_folder(self.ctx.results, dataset, SCHEME_TRAINERS[scheme], fold) / "validation").is_dir()

    # ------------------------------------------------- the plugin's evaluation, in this process
    def postprocess(self, raw: Path, out: Path, components: Path) -> None:
        """``nnUNetv2_mtmd_postprocess -i RAW -o OUT --components FILE`` as a library call."""
        ctx = self.ctx
        n = ctx.opts.num_processes
        cmd = ["nnUNetv2_mtmd_postprocess", "-i", str(raw), "-o", str(out), "-d", str(ctx.raw / ctx.merged),
               "-np", str(n), "--components", str(components), "--overwrite"]

        def call() -> None:
            from nnunetv2_mtmd.evaluation.postprocess import postprocess_folder, read_components

            postprocess_folder(raw, out, ctx.spec, ctx.file_ending(), num_processes=n, overwrite=True,
                               components=read_components(components, ctx.spec))

        ctx.runner.library("postprocess", cmd, call)

    def evaluate(self, pred: Path, out: Path) -> None:
        """``nnUNetv2_mtmd_evaluate -ref labelsTr -pred PRED -o OUT --allow-missing`` as a library call."""
        ctx = self.ctx
        n = ctx.opts.num_processes
        ref = ctx.raw / ctx.merged / "labelsTr"
        cmd = ["nnUNetv2_mtmd_evaluate", "-ref", str(ref), "-pred", str(pred), "-d", str(ctx.raw / ctx.merged),
               "-o", str(out), "-np", str(n), "--allow-missing", "--overwrite"]

        def call() -> None:
            from nnunetv2_mtmd.evaluation.evaluate import evaluate_folders

            summary = evaluate_folders(ref, pred, ctx.spec, ctx.file_ending(), out, num_processes=n,
                                       allow_missing=True, overwrite=True)
            logger.info("  evaluated %d cases into %s", summary["n_cases"], out)

        ctx.runner.library("evaluate", cmd, call)

    def compare(self, schemes: Sequence[str], variant: str) -> None:
        """``nnUNetv2_mtmd_compare`` of the schemes' evaluations (the first is the KS reference)."""
        folders = [self.ev / s / variant for s in schemes]
        out = self.ev / f"compare_{variant}"
        cmd = ["nnUNetv2_mtmd_compare", *map(str, folders), "-o", str(out), "--names", *schemes, "--overwrite"]

        def call() -> None:
            from nnunetv2_mtmd.evaluation.compare import compare_folders

            compare_folders(folders, out, names=list(schemes), overwrite=True)

        self.ctx.runner.library("compare", cmd, call)

    # ------------------------------------------------------------------------- inputs
    def gather(self, scheme: str, fold: int, dataset: str, out: Path) -> int:
        """Held-out predictions of ``scheme``'s model of ``fold`` on ``dataset`` into ``out`` (unified labels,
        merged case ids). Returns the number of cases."""
        ctx = self.ctx
        fe = ctx.file_ending()
        n = 0
        val = fold_folder(ctx.results, dataset, SCHEME_TRAINERS[scheme], fold) / "validation"
        with atomic_output_dir(out, overwrite=True) as tmp:
            for p in sorted(p for p in val.iterdir() if p.name.endswith(fe)):
                if scheme == INDIVIDUAL:
                    dom = next(d for d in ctx.spec.domains if d.source_dataset == dataset)
                    unify_individual_prediction(p, tmp / f"{dom.case_id(p.name[: -len(fe)])}{fe}", dom)
                else:
                    shutil.copyfile(p, tmp / p.name)
                n += 1
        return n

    def fold_components(self, fold: int) -> Path:
        """The number of parts of every structure, counted in the training labels of ``fold`` only (the
        held-out cases must not inform their own post-processing), as ``DIR/evaluation/components_foldX.json``."""
        from nnunetv2_mtmd.evaluation.postprocess import expected_components, structure_names

        ctx = self.ctx
        out = self.ev / f"components_fold{fold}.json"
        ctx.runner.note(f"count the parts of every structure in the training labels of fold {fold} into {out}")
        if ctx.dry:
            return out
        fe = ctx.file_ending()
        train = ctx.load_splits(ctx.merged)[fold]["train"]
        files = [ctx.raw / ctx.merged / "labelsTr" / f"{c}{fe}" for c in train]
        comp = expected_components(files, ctx.spec, fe)
        atomic_save_json({name: comp[lab] for name, lab in structure_names(ctx.spec).items()}, out)
        return out

    def reference_parts(self, folds: Sequence[int], components: Mapping[int, Path]) -> Path:
        """The held-out reference structures that the post-processing (with each fold's ``components``
        file) would cut, as ``DIR/evaluation/reference_parts.json`` (:func:`parts_beyond_kept`)."""
        from nnunetv2_mtmd.evaluation.postprocess import parts_beyond_kept, read_components

        ctx = self.ctx
        out = self.ev / "reference_parts.json"
        ctx.runner.note(f"list the held-out reference structures with more parts than the post-processing keeps "
                        f"into {out}")
        if ctx.dry:
            return out
        fe, splits = ctx.file_ending(), ctx.load_splits(ctx.merged)
        n, rows = 0, []
        for f in folds:
            files = [ctx.raw / ctx.merged / "labelsTr" / f"{c}{fe}" for c in splits[f]["val"]]
            m, cut = parts_beyond_kept(files, ctx.spec, fe, read_components(components[f], ctx.spec))
            n += m
            rows += [{"fold": f, **r} for r in cut]
        atomic_save_json({"folds": list(folds), "structures": n, "cut": rows}, out)
        return out

    def best_multi_domain_scheme(self, schemes: Sequence[str] | None = None) -> str | None:
        """The multi-domain scheme of ``schemes`` (default: every evaluated one) with the highest mean over
        domains of the domain-mean Dice (raw)."""
        best, best_val = None, -1.0
        for s in self.ctx.eval_schemes if schemes is None else schemes:
            if s == INDIVIDUAL:
                continue
            summ = self.ev / s / "raw" / "summary.json"
            if not summ.is_file():
                continue
            val = domain_mean_dice(load_json(summ))
            if val is not None and val > best_val:
                best, best_val = s, val
        return best

    # ---------------------------------------------------------------------- embeddings
    def embeddings(self, fold: int, schemes: Sequence[str]) -> dict[str, Path]:
        """``nnUNetv2_mtmd_embeddings`` of each scheme's model of ``fold`` into ``DIR/embeddings/<scheme>_foldX``.

        Every evaluation analyses the first evaluated fold, so without this check each later fold's
        evaluation would recompute the same embeddings (minutes per scheme on a CPU). They are reused
        while the model's ``done`` record is the one they were computed from (:meth:`embeddings_key`), also
        when the model was restored from an archive without its checkpoint."""
        ctx = self.ctx
        out = {}
        for s in schemes:
            emb_dir = out[s] = self.embeddings_dir(s, fold)
            key = self.embeddings_key(s, fold)
            if ctx.state.is_done(key) and (emb_dir / "similarity.csv").is_file():
                logger.info("[embeddings] %s, fold %d: computed before from the same model (reused)", s, fold)
                continue
            ctx.runner.command("embeddings", ["nnUNetv2_mtmd_embeddings", "-d", ctx.merged, "-c", CONFIGURATION,
                                              "-tr", SCHEME_TRAINERS[s], "-p", PLANS_NAME, "-f", str(fold),
                                              "-o", str(emb_dir), "-device", "cpu", "--overwrite", "--no_progress"],
                               "embeddings", ctx.env())
            if not ctx.dry:
                ctx.state.mark_done(key)
        return out

    def embeddings_dir(self, scheme: str, fold: int) -> Path:
        return self.ctx.dir / "embeddings" / f"{scheme}_fold{fold}"

    def embeddings_key(self, scheme: str, fold: int) -> str:
        """State key of a multi-domain model's embeddings: scheme, fold and the model's ``done`` time."""
        stamp = (self.ctx.state.data["done"].get(model_key(fold, scheme, self.ctx.merged)) or {}).get("at", "none")
        return f"embeddings:{scheme}:fold{fold}:{stamp}"
