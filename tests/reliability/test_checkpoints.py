"""Crash safety of the autoencoder phase and of the trainer's checkpoint I/O (issue 7, items 1 and 3),
in process and fast. The end-to-end kill-and-resume of real ``nnUNetv2_train`` runs is in
test_resume.py.

- the phase resumes from ``label_autoencoder_partial.pth`` exactly where it stopped (same weights,
  optimizer state and history as an uninterrupted run);
- a finished ``label_autoencoder.pth`` is reused, never silently retrained;
- files made for another setup (other training cases, other configuration) are ignored, with a
  warning; unreadable files give a clear error naming the file;
- everything is read with ``weights_only=True``; a pickle with arbitrary objects is refused;
- checkpoint writes are atomic.
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest
import torch

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.losses.anatomical_prior import LabelAutoencoder
from nnunetv2_mtmd.training import autoencoder_phase as ph
from nnunetv2_mtmd.training.checkpoint import (
    AE_KEY,
    autoencoder_entry,
    load_checkpoint_file,
    restore_autoencoder,
    save_atomic,
)

IDS = [[1, 2], [3]]
CASES = ["a_1", "a_2", "b_1"]


def make_ae(seed: int = 0) -> LabelAutoencoder:
    torch.manual_seed(seed)
    return LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2))


def batches(seed: int):
    """Deterministic endless stream of nnU-Net-like batches: target (4, 1, 8, 8), domain (4,)."""
    g = torch.Generator().manual_seed(seed)
    dom = torch.tensor([0, 0, 1, 1])
    while True:
        t = torch.zeros(4, 1, 8, 8)
        for i, k in enumerate(dom.tolist()):
            ids = torch.tensor([0, *IDS[k]])
            t[i, 0] = ids[torch.randint(0, len(ids), (8, 8), generator=g)].float()
        yield {"target": [t, t[:, :, ::2, ::2]], "domain": dom}


def run_phase(ae, folder: Path, iterations: int, logs: list[str] | None = None, seed: int = 0,
              train_cases=CASES, stop_after: int | None = None, **kw):
    """Run the phase; ``stop_after`` simulates a kill: the training stream dies after that many batches."""
    stream = batches(seed)
    if stop_after is not None:
        stream = itertools.islice(stream, stop_after)
    return ph.train_autoencoder(ae, stream, batches(99), iterations, torch.device("cpu"), folder,
                                (logs if logs is not None else []).append, save_every=2,
                                val_batches_per_check=1, train_cases=train_cases, **kw)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_phase_resumes_where_it_stopped(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = make_ae()
    ref_state = run_phase(ref, ref_dir, 6)
    # same run killed during iteration 5 (the partial file holds 4 iterations), then started again
    ae = make_ae()
    with pytest.raises(StopIteration):
        run_phase(ae, run_dir, 6, stop_after=4)
    partial = torch.load(run_dir / ph.AE_PARTIAL_FILE, weights_only=True)
    assert partial["iterations_done"] == 4 and not partial["finished"]
    assert not (run_dir / ph.AE_FILE).exists()
    logs: list[str] = []
    fresh = make_ae(seed=123)  # a new process: other random init, state comes from the file
    # the resumed stream continues with the batches the killed run had not consumed
    st = ph.train_autoencoder(fresh, itertools.islice(batches(0), 4, None), batches(99), 6, torch.device("cpu"),
                              run_dir, logs.append, save_every=2, val_batches_per_check=1, train_cases=CASES)
    assert any("resuming from label_autoencoder_partial.pth at iteration 4/6" in m for m in logs)
    assert st.iterations_done == 6 and st.finished
    assert [h["iteration"] for h in st.history] == [2, 4, 6]
    for a, b in zip(st.history, ref_state.history):
        assert a["iteration"] == b["iteration"] and a["ce"] == pytest.approx(b["ce"], rel=1e-5)
    # identical to the uninterrupted run: weights and Adam state were restored, not re-initialised
    for (n, p), (_, q) in zip(fresh.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    assert not (run_dir / ph.AE_PARTIAL_FILE).exists() and (run_dir / ph.AE_FILE).is_file()
    assert all(not p.requires_grad for p in fresh.parameters()) and not fresh.training


def test_finished_autoencoder_is_reused_not_retrained(tmp_path):
    ae = make_ae()
    run_phase(ae, tmp_path, 4)
    saved = {k: v.clone() for k, v in ae.state_dict().items()}
    mtime = (tmp_path / ph.AE_FILE).stat().st_mtime_ns
    logs: list[str] = []
    other = make_ae(seed=7)

    def no_batches():
        raise AssertionError("the autoencoder was trained again")
        yield

    st = ph.train_autoencoder(other, no_batches(), no_batches(), 4, torch.device("cpu"), tmp_path, logs.append,
                              save_every=2, train_cases=CASES)
    assert st.finished and st.iterations_done == 4
    assert _state_equal(other.state_dict(), saved)
    assert any("reusing the finished autoencoder" in m for m in logs)
    assert (tmp_path / ph.AE_FILE).stat().st_mtime_ns == mtime
    assert all(not p.requires_grad for p in other.parameters())


@pytest.mark.parametrize("change,differs", [
    ({"train_cases": ["a_1", "b_1"]}, "train_cases"),
    ({"lambda1": 0.5}, "lambda1"),
])
def test_files_of_another_setup_are_ignored_with_a_warning(tmp_path, change, differs):
    run_phase(make_ae(), tmp_path, 4)
    logs: list[str] = []
    kw = {"train_cases": change.get("train_cases", CASES)}
    extra = {k: v for k, v in change.items() if k != "train_cases"}
    st = run_phase(make_ae(seed=3), tmp_path, 4, logs, **kw, **extra)
    assert any("ignoring label_autoencoder.pth" in m and differs in m for m in logs), logs
    assert not any("reusing" in m for m in logs)
    assert [h["iteration"] for h in st.history] == [2, 4]  # trained from scratch
    assert torch.load(tmp_path / ph.AE_FILE, weights_only=True)["fingerprint"][differs] == (
        sorted(change[differs]) if differs == "train_cases" else change[differs])


def test_other_autoencoder_configuration_is_not_resumed(tmp_path):
    with pytest.raises(StopIteration):
        run_phase(make_ae(), tmp_path, 6, stop_after=2)
    logs: list[str] = []
    wider = LabelAutoencoder(IDS, features=(8, 8), strides=(1, 2))
    st = run_phase(wider, tmp_path, 2, logs)
    assert any("ignoring label_autoencoder_partial.pth" in m and "config" in m for m in logs)
    assert st.iterations_done == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x80\x04garbage"])
def test_unreadable_partial_file_gives_clear_error(tmp_path, content):
    (tmp_path / ph.AE_PARTIAL_FILE).write_bytes(content)
    with pytest.raises(InputDataError) as e:
        run_phase(make_ae(), tmp_path, 2)
    assert ph.AE_PARTIAL_FILE in str(e.value) and "Delete it" in str(e.value)


class _Evil:
    """Unpickling this would run code; weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / ph.AE_PARTIAL_FILE
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    with pytest.raises(InputDataError, match="Cannot read the label autoencoder file"):
        ph.read_state_file(path)
    ck = tmp_path / "checkpoint_latest.pth"
    with open(ck, "wb") as f:
        pickle.dump({"network_weights": {}, "x": _Evil()}, f)
    with pytest.raises(InputDataError, match="Cannot load checkpoint .* safely"):
        load_checkpoint_file(ck)


def test_nnunet_checkpoint_content_loads_weights_only(tmp_path):
    """The types nnU-Net puts into its checkpoints (numpy scalars in the logging lists, a device in
    init_args) load with weights_only=True and the numpy allowlist."""
    import numpy as np

    ae = make_ae()
    ckpt = {"network_weights": {"w": torch.ones(2)}, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
            "grad_scaler_state": None, "_best_ema": np.float32(0.5), "current_epoch": 3,
            "logging": {"mean_fg_dice": [np.float32(0.1)], "train_losses": [np.float64(1.0)], "lrs": [0.01],
                        "dice_per_class_or_region": [[np.float32(0.2)]]},
            "init_args": {"plans": {}, "configuration": "2d", "fold": 0, "dataset_json": {},
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainerMTMD", "inference_allowed_mirroring_axes": (0, 1),
            AE_KEY: autoencoder_entry(ae, True)}
    save_atomic(ckpt, tmp_path / "c.pth")
    back = load_checkpoint_file(tmp_path / "c.pth")
    assert back["_best_ema"] == np.float32(0.5) and back["current_epoch"] == 3
    other = make_ae(seed=5)
    assert restore_autoencoder(other, back[AE_KEY], "c.pth") is True
    assert _state_equal(other.state_dict(), ae.state_dict())


@pytest.mark.parametrize("entry,key", [
    ("not a dict", None),
    ({"state_dict": {}, "trained": True}, "config"),
    ({"config": {}, "state_dict": [], "trained": True}, "state_dict"),
    ({"config": {}, "state_dict": {}, "trained": "yes"}, "trained"),
])
def test_malformed_autoencoder_entry_names_the_key(entry, key):
    with pytest.raises(InputDataError) as e:
        restore_autoencoder(make_ae(), entry, "ck.pth")
    assert f"ck.pth['{AE_KEY}']" in str(e.value)
    if key:
        assert f"['{key}']" in str(e.value)


def test_autoencoder_entry_of_another_configuration_is_refused():
    entry = autoencoder_entry(LabelAutoencoder(IDS, features=(8, 8), strides=(1, 2)), True)
    with pytest.raises(InputDataError, match="differs in features"):
        restore_autoencoder(make_ae(), entry, "ck.pth")


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    save_atomic({"epoch": 1}, path)

    class _Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"epoch": 2, "x": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]  # no temporary file left


# ------------------------------------------------------------------------- the trainers' save path
def _saving_trainer(cls, monkeypatch, content):
    """A trainer object with only what ``save_checkpoint`` needs; nnU-Net's own save writes ``content``
    (a callable may raise, like a kill or a full disk in the middle of nnU-Net's torch.save)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    def fake_nnunet_save(self, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")  # nnU-Net writes straight to the target file
            obj = content() if callable(content) else content
            f.seek(0)
            torch.save(obj, f)

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", fake_nnunet_save)
    t = cls.__new__(cls)
    t.local_rank, t.disable_checkpointing = 0, False
    t.lambda_msc = 0.0  # no MSC temperatures to save: the stub has no network to build the MSC loss from
    return t


@pytest.mark.parametrize("with_autoencoder", [False, True])
def test_trainer_checkpoint_writes_are_atomic(tmp_path, monkeypatch, with_autoencoder):
    from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL
    from nnunetv2_mtmd.training.trainers.schemes import nnUNetTrainerMTMD

    cls = nnUNetTrainerMTMD if with_autoencoder else nnUNetTrainerMTMD_DSL
    path = tmp_path / "checkpoint_latest.pth"
    t = _saving_trainer(cls, monkeypatch, {"current_epoch": 1})
    if with_autoencoder:
        t.autoencoder, t.autoencoder_trained = make_ae(), True
    t.save_checkpoint(str(path))
    first = load_checkpoint_file(path)
    assert first["current_epoch"] == 1 and (AE_KEY in first) == with_autoencoder

    def killed():
        raise KeyboardInterrupt("killed while nnU-Net writes")

    t = _saving_trainer(cls, monkeypatch, killed)
    if with_autoencoder:
        t.autoencoder, t.autoencoder_trained = make_ae(), True
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint(str(path))
    assert load_checkpoint_file(path)["current_epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]
