"""``--stage prepare``: copy and merge the sources, fingerprint and plan with nnU-Net's planners, write
the coarse study plans (budget recorded), preprocess them, and write the splits."""

from __future__ import annotations

import logging
import shutil

from nnunetv2_mtmd.apps.study.constants import CONFIGURATION, N_SPLITS, PLANS_NAME, SPLIT_SEED
from nnunetv2_mtmd.apps.study.context import StudyContext
from nnunetv2_mtmd.apps.study.data import individual_splits
from nnunetv2_mtmd.apps.study.plans import write_study_plans
from nnunetv2_mtmd.io import atomic_output_dir, atomic_save_json, load_json

logger = logging.getLogger(__name__)


class PrepareStage:
    """Each step runs once: done steps are recorded in ``state.json`` and skipped on a re-run."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def run(self) -> None:
        for step, do in (("copy", self.copy), ("merge", self.merge), ("fingerprint", self.fingerprint),
                         ("plan", self.plan), ("plans_variant", self.plans_variant),
                         ("preprocess", self.preprocess), ("splits", self.splits)):
            if not self.ctx.state.is_done(step):
                info = do()
                if not self.ctx.dry:
                    self.ctx.state.mark_done(step, **(info or {}))

    @property
    def _ids(self) -> list[str]:
        """Dataset ids for nnU-Net's commands: the sources, then the merged dataset."""
        return [str(s.dataset_id) for s in self.ctx.sources] + [str(self.ctx.opts.merged_id)]

    def _run(self, step: str, cmd: list[str]) -> None:
        self.ctx.runner.command(step, cmd, "prepare", self.ctx.env())

    def copy(self) -> None:
        for s in self.ctx.sources:
            dst = self.ctx.raw / s.name
            self.ctx.runner.note(f"copy {s.folder} -> {dst}")
            if not self.ctx.dry:
                with atomic_output_dir(dst, overwrite=True) as tmp:
                    shutil.copytree(s.folder, tmp, dirs_exist_ok=True)

    def merge(self) -> None:
        srcs, opts = self.ctx.sources, self.ctx.opts
        ch = load_json(srcs[0].folder / "dataset.json")["channel_names"]
        names = [ch[str(i)] for i in range(len(ch))]
        self._run("merge", ["nnUNetv2_mtmd_merge", "-d", *(str(self.ctx.raw / s.name) for s in srcs), "--domains",
                            *(s.domain for s in srcs), "-o", str(opts.merged_id), "-n", opts.merged_name,
                            "--channel_names", *names, "--drop_duplicates", "--overwrite"])
        if not self.ctx.dry:
            self.drop_cases_missing_from_merge()

    def drop_cases_missing_from_merge(self) -> None:
        """Remove from the Individual copies the cases the merge dropped (exact duplicates), so that
        both sides train and evaluate on the same cases."""
        ctx = self.ctx
        fe = ctx.file_ending()
        merged = set(ctx.merged_case_ids())
        for s in ctx.sources:
            dom = ctx.spec.by_name(s.domain)
            folder = ctx.raw / s.name
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
                atomic_save_json(dj, folder / "dataset.json")

    def fingerprint(self) -> None:
        self._run("fingerprint", ["nnUNetv2_extract_fingerprint", "-d", *self._ids, "-np",
                                  str(self.ctx.opts.num_processes)]
                  + (["--verify_dataset_integrity"] if self.ctx.opts.verify else []))

    def plan(self) -> None:
        ids = self._ids
        self._run("plan", ["nnUNetv2_plan_experiment", "-d", *ids[:-1]])
        self._run("plan", ["nnUNetv2_plan_experiment", "-d", ids[-1], "-pl", "nnUNetPlannerMTMD"])

    def plans_variant(self) -> dict[str, object] | None:
        b = self.ctx.budget
        self.ctx.runner.note(
            f"write {PLANS_NAME}.json next to every nnUNetPlans.json: 2d with in-plane spacing {b.spacing_mm} mm, "
            f"patch {b.patch_size}^2, batch {b.batch_size}, {b.base_features} features in the first stage, at most "
            f"{b.max_features}")
        if self.ctx.dry:
            return None
        return {"plans": write_study_plans(self.ctx.pre, self.ctx.datasets, b)}

    def preprocess(self) -> None:
        self._run("preprocess", ["nnUNetv2_preprocess", "-d", *self._ids, "-plans_name", PLANS_NAME, "-c",
                                 CONFIGURATION, "-np", str(self.ctx.opts.num_processes)])

    def splits(self) -> None:
        ctx = self.ctx
        ctx.runner.note(f"write a domain-stratified {N_SPLITS}-fold split of {ctx.merged} (seed {SPLIT_SEED}) and "
                        "the same held-out cases for every source dataset")
        if ctx.dry:
            return
        from nnunetv2_mtmd.evaluation.splits import describe_splits, domain_stratified_kfold, write_splits

        splits = domain_stratified_kfold(ctx.merged_case_ids(), ctx.spec, N_SPLITS, SPLIT_SEED)
        write_splits(splits, ctx.pre / ctx.merged / "splits_final.json")
        logger.info("  merged split:\n%s", describe_splits(splits, ctx.spec))
        for dom_name, sp in individual_splits(splits, ctx.spec).items():
            write_splits(sp, ctx.pre / ctx.spec.by_name(dom_name).source_dataset / "splits_final.json")
