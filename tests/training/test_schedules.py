"""The demo trainer's schedule (nnunetv2_mtmd/training/trainers/schedules.py) on nnU-Net's real
trainer and logger."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.training.logging.nnunet_logger import MetaLogger

from nnunetv2_mtmd.training.trainers.schedules import nnUNetTrainerMTMD_demo, progress_plot_skipped
from nnunetv2_mtmd.training.trainers.schemes import nnUNetTrainerMTMD
from tests.reliability.model_folder import dataset_json, plans


def _demo_trainer() -> nnUNetTrainerMTMD_demo:
    return nnUNetTrainerMTMD_demo({**plans(), "continue_training": False}, "2d", "all", dataset_json(),
                                  torch.device("cpu"))


def test_demo_trainer_schedule_and_oversampling(nnunet_dirs):
    t = _demo_trainer()
    schedule = (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.ae_iterations)
    assert schedule == (40, 60, 5, 200)
    assert t.oversample_foreground_percent == pytest.approx(0.66)  # nnU-Net: 0.33
    assert t.rare_class_exponent == pytest.approx(0.5)  # nnU-Net: 0 (uniform over the case's classes)


def _logger_with_two_epochs(tmp_path) -> MetaLogger:
    lg = MetaLogger(str(tmp_path), resume=False)
    for epoch in range(2):
        for key, value in (("mean_fg_dice", 0.5), ("ema_fg_dice", 0.5), ("dice_per_class_or_region", [0.5]),
                           ("train_losses", 1.0), ("val_losses", 1.0), ("lrs", 0.01),
                           ("epoch_start_timestamps", 0.0), ("epoch_end_timestamps", 1.0)):
            lg.log(key, value, epoch)
    return lg


def test_progress_plot_skipped_then_restored(tmp_path):
    lg = _logger_with_two_epochs(tmp_path)
    with progress_plot_skipped(lg):
        lg.plot_progress_png(str(tmp_path))
    assert not (tmp_path / "progress.png").exists()
    lg.plot_progress_png(str(tmp_path))  # nnU-Net's own method again
    assert (tmp_path / "progress.png").stat().st_size > 0


@pytest.mark.parametrize("epoch, plotted", [(0, False), (3, False), (4, True), (9, True), (38, False), (39, True)])
def test_demo_trainer_plots_every_fifth_and_last_epoch(nnunet_dirs, monkeypatch, epoch, plotted):
    t = _demo_trainer()
    calls = []
    monkeypatch.setattr(nnUNetTrainerMTMD, "on_epoch_end",  # the scheme the demo schedule runs
                        lambda self: calls.append(self.logger.plot_progress_png("unused")))
    monkeypatch.setattr(MetaLogger, "plot_progress_png", lambda self, folder: "plotted")
    t.current_epoch = epoch
    t.on_epoch_end()
    assert calls == ["plotted" if plotted else None]
