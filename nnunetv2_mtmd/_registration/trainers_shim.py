"""Installed by nnunetv2-mtmd into nnunetv2/training/nnUNetTrainer/ so that `nnUNetv2_train -tr`
and `nnUNetv2_predict` find the MTMD trainers. Uninstall nnunetv2-mtmd to remove it.

A broken plugin must never break stock nnU-Net: import errors are logged, not raised.
"""
try:
    from nnunetv2_mtmd.training.trainers import *  # noqa: F401,F403
except Exception as _e:  # pragma: no cover - exercised by tests/test_registration.py in a subprocess
    import warnings as _w

    _w.warn(f"nnunetv2-mtmd: MTMD trainers unavailable ({type(_e).__name__}: {_e})", stacklevel=1)
