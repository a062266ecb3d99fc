"""The study's archive (``--archive DIR``): what outlives a work folder, so a study can span machines
whose work folders do not survive (docs/study.md, "Archive").

A finished model leaves in its work folder a checkpoint, its held-out predictions and text files. The
report needs only the text files (nnU-Net's training logs: epochs, loss terms, gradient-norm ratios;
``label_autoencoder.json``), the model's evaluation of its held-out cases (``metrics.csv``,
``slices.csv``, ``summary.json``, raw and post-processed: the pooled tables are rebuilt from them by
:func:`~nnunetv2_mtmd.evaluation.evaluate.pool_evaluations`), the first fold's embedding tables, and its
records in ``state.json`` (done, seconds, model-code fingerprints). The archive keeps exactly these,
kilobytes per model, and no image, checkpoint or prediction (it may be committed next to the report).

Layout of ``DIR``::

    archive.json                          version, study configuration, one entry per model
    models/fold0__DSL__Dataset950_X/
        fold/                             the *.txt and *.json files of nnU-Net's fold_0 folder
        evaluation/{raw,postprocessed}/   metrics.csv, slices.csv, summary.json
        embeddings/                       *.csv and *.json of nnUNetv2_mtmd_embeddings (first fold only)

Restoring (:meth:`StudyArchive.restore`, at the start of every run with ``--archive``) puts a model back
into a work folder that does not have it: its text files into its fold folder, with
:data:`ARCHIVED_MARKER`, which makes :func:`~nnunetv2_mtmd.apps.study.progress.training_status` report it
``done`` without a checkpoint; its evaluation, embeddings and state records where the study keeps its
own. A model the work folder has (trained or started there) is never replaced. The configuration
(sources, domains, budget, splits) must be the archive's, so archived and new models stay comparable.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.constants import ARCHIVE_VERSION, ARCHIVED_MARKER, EVAL_VARIANTS, INDIVIDUAL
from nnunetv2_mtmd.apps.study.context import StudyContext
from nnunetv2_mtmd.apps.study.fingerprint import STATE_KEY, model_key
from nnunetv2_mtmd.apps.study.progress import fold_folder
from nnunetv2_mtmd.apps.study.state import _now, config_differences
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_output_dir, atomic_save_json, load_json

logger = logging.getLogger(__name__)

ARCHIVE_FILE = "archive.json"
#: Files of a fold folder, an evaluation and an embeddings folder that the archive keeps.
_TEXT_SUFFIXES = (".txt", ".json", ".csv")
_EVALUATION_FILES = ("metrics.csv", "slices.csv", "summary.json")
#: Configuration keys a restore does not require to be equal (where the same data lies on this machine).
_LOCAL_KEYS = ("sources_dir",)


def model_folder_name(key: str) -> str:
    """``train:fold0:DSL:Dataset950_X`` -> ``fold0__DSL__Dataset950_X``."""
    return "__".join(key.split(":")[1:])


def _copy_files(src: Path, dst: Path, suffixes: tuple[str, ...] = _TEXT_SUFFIXES,
                names: tuple[str, ...] | None = None) -> int:
    """The plain files of ``src`` (not its subfolders) with one of ``suffixes`` (or named ``names``) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(src.iterdir()):
        if f.is_file() and (f.name in names if names is not None else f.suffix in suffixes):
            shutil.copyfile(f, dst / f.name)
            n += 1
    return n


class StudyArchive:
    """Writes the finished models of a work folder to an archive and restores them from it.

    ``evaluation`` is the study's :class:`~nnunetv2_mtmd.apps.study.stages.EvaluateStage` (the per-model
    evaluations and embeddings it keeps, and computes for models that have none yet)."""

    def __init__(self, ctx: StudyContext, path: Path, evaluation: Any):
        self.ctx = ctx
        self.path = Path(path)
        self.evaluation = evaluation
        # --jobs > 1: trainings finish in worker threads; one archive write at a time
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- write
    def finished_models(self) -> list[tuple[int, str, str, str]]:
        """``(fold, scheme, dataset, trainer)`` of every done model of the work folder's folds and schemes."""
        ctx = self.ctx
        return [(f, s, d, tr) for f, s, d, tr in ctx.train_order(ctx.eval_folds, ctx.all_schemes)
                if ctx.run_status(d, tr, f) == "done"]

    def save(self) -> int:
        """Write every finished model to the archive (evaluating those not evaluated yet, and computing the
        embeddings of the first fold's multi-domain models). The archive is replaced as a whole (all or
        nothing). Returns the number of models archived."""
        ctx = self.ctx
        if ctx.dry:
            ctx.runner.note(f"archive every finished model into {self.path}")
            return 0
        with self._lock, self.evaluation.lock:
            first = min(ctx.eval_folds)
            models = self.finished_models()
            entries: dict[str, Any] = {}
            with atomic_output_dir(self.path, overwrite=True) as tmp:
                for fold, scheme, dataset, trainer in models:
                    key = model_key(fold, scheme, dataset)
                    if not ctx.state.is_done(key):  # done by its files, not yet recorded (--stage archive)
                        ctx.state.mark_done(key)
                    ev_dir = self.evaluation.evaluate_model(scheme, fold, dataset)
                    emb = None
                    if fold == first and scheme != INDIVIDUAL:
                        emb = self.evaluation.embeddings(fold, [scheme])[scheme]
                    entries[key] = self._save_model(tmp / "models" / model_folder_name(key), key, fold, scheme,
                                                    dataset, trainer, ev_dir, emb)
                atomic_save_json({"version": ARCHIVE_VERSION, "written": _now(), "workdir": str(ctx.dir),
                                  "config": ctx.state.config, "schemes": ctx.all_schemes, "later": list(ctx.later),
                                  "folds": ctx.eval_folds, "commands": list(ctx.state.data.get("commands", [])),
                                  "models": entries}, tmp / ARCHIVE_FILE)
        logger.info("[archive] %d finished model(s) written to %s", len(entries), self.path)
        return len(entries)

    def _save_model(self, out: Path, key: str, fold: int, scheme: str, dataset: str, trainer: str,
                    ev_dir: Path, emb: Path | None) -> dict[str, Any]:
        ctx = self.ctx
        _copy_files(fold_folder(ctx.results, dataset, trainer, fold), out / "fold")
        for v in EVAL_VARIANTS:
            _copy_files(ev_dir / v, out / "evaluation" / v, names=_EVALUATION_FILES)
        if emb is not None and emb.is_dir():
            _copy_files(emb, out / "embeddings")
        marker = fold_folder(ctx.results, dataset, trainer, fold) / ARCHIVED_MARKER
        return {"fold": fold, "scheme": scheme, "dataset": dataset, "trainer": trainer,
                "done": ctx.state.data["done"][key], "seconds": ctx.state.data["seconds"].get(key),
                "fingerprints": ctx.state.data.get(STATE_KEY, {}).get(key, []),
                "embeddings": emb is not None and emb.is_dir(),
                # a model restored before keeps the name of the work folder that trained it
                "trained_in": load_json(marker)["trained_in"] if marker.is_file() else str(ctx.dir)}

    def model_done(self) -> None:
        """After a model has finished: the archive again (so that it never lags more than the models in
        training)."""
        self.save()

    # -------------------------------------------------------------------------------- restore
    def read(self) -> dict[str, Any]:
        f = self.path / ARCHIVE_FILE
        if not f.is_file():
            raise InputDataError(f"--archive {self.path}: {f} does not exist. Give the folder a study wrote with "
                                 "--archive (it holds archive.json and models/), or a new folder to start one.")
        data = load_json(f)
        if data.get("version") != ARCHIVE_VERSION:
            raise InputDataError(f"{f} has archive version {data.get('version')!r}, expected {ARCHIVE_VERSION}: "
                                 "written by another version of nnUNetv2_mtmd_study.")
        return data

    def check_config(self, data: Mapping[str, Any]) -> None:
        old, now = dict(data.get("config") or {}), dict(self.ctx.state.config or self.ctx.config)
        for k in _LOCAL_KEYS:
            if old.get(k) != now.get(k):
                logger.info("[archive] %s: archived %r, here %r (not compared)", k, old.get(k), now.get(k))
            old.pop(k, None)
            now.pop(k, None)
        diff = config_differences(old, now)
        if diff:
            raise InputDataError(
                f"--archive {self.path} holds models of another study configuration: " + "; ".join(diff)
                + ". Archived and new models must share sources, domains, splits and budget: run with the "
                "archived values (leave the options out of a new work folder's first run and give them as "
                "recorded) or use another --archive folder.")

    def restore(self) -> int:
        """Put every archived model the work folder does not have back into it. Returns their number."""
        ctx = self.ctx
        if ctx.dry or not (self.path / ARCHIVE_FILE).is_file():
            if not ctx.dry:
                logger.info("[archive] %s holds no archive yet: nothing to restore", self.path)
            return 0
        data = self.read()
        self.check_config(data)
        n = 0
        for key, m in data["models"].items():
            fold, scheme, dataset, trainer = m["fold"], m["scheme"], m["dataset"], m["trainer"]
            if ctx.run_status(dataset, trainer, fold) != "new":
                continue  # trained, started or restored here: the work folder's own files win
            src = self.path / "models" / model_folder_name(key)
            dst = fold_folder(ctx.results, dataset, trainer, fold)
            _copy_files(src / "fold", dst)
            ev = self.evaluation.model_evaluation_dir(scheme, fold, dataset)
            for v in EVAL_VARIANTS:
                with atomic_output_dir(ev / v, overwrite=True) as tmp:
                    _copy_files(src / "evaluation" / v, tmp, names=_EVALUATION_FILES)
            st = ctx.state
            with st._lock:
                st.data["done"][key] = dict(m["done"])
                if m.get("seconds") is not None:
                    st.data["seconds"][key] = m["seconds"]
                if m.get("fingerprints"):
                    st.data.setdefault(STATE_KEY, {})[key] = list(m["fingerprints"])
                st.data["done"][f"evaluate_model:{key}"] = {"at": _now(), "model_done_at": m["done"].get("at"),
                                                            "restored_from": str(self.path)}
                if m.get("embeddings"):
                    emb = self.evaluation.embeddings_dir(scheme, fold)
                    with atomic_output_dir(emb, overwrite=True) as tmp:
                        _copy_files(src / "embeddings", tmp)
                    st.data["done"][self.evaluation.embeddings_key(scheme, fold)] = {
                        "at": _now(), "restored_from": str(self.path)}
                for c in data.get("commands", []):
                    if c not in st.data["commands"]:
                        st.data["commands"].append(c)
                st.save()
            # last: the marker makes the model count as done
            (dst / ARCHIVED_MARKER).write_text(json.dumps(
                {"archive": str(self.path), "restored": _now(), "trained_in": m.get("trained_in"),
                 "archive_written": data.get("written")}, indent=2))
            n += 1
        logger.info("[archive] restored %d model(s) from %s (%d in the archive)", n, self.path, len(data["models"]))
        return n


def restored_models(ctx: StudyContext) -> dict[str, dict[str, Any]]:
    """Model key -> :data:`ARCHIVED_MARKER` contents of every model of the work folder restored from an
    archive (for the report)."""
    out = {}
    for f, s, d, tr in ctx.train_order(ctx.eval_folds, ctx.all_schemes):
        marker = fold_folder(ctx.results, d, tr, f) / ARCHIVED_MARKER
        if marker.is_file():
            out[model_key(f, s, d)] = load_json(marker)
    return out
