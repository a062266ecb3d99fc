"""Installed by nnunetv2-mtmd into nnunetv2/experiment_planning/ so that
`nnUNetv2_plan_and_preprocess -pl nnUNetPlannerMTMD` finds the MTMD planners. Uninstall
nnunetv2-mtmd to remove it.

A broken plugin must never break stock nnU-Net: import errors are logged, not raised.
"""
try:
    from nnunetv2_mtmd.planning.planners import *  # noqa: F401,F403
except Exception as _e:  # pragma: no cover - exercised by tests/test_registration.py in a subprocess
    import warnings as _w

    _w.warn(f"nnunetv2-mtmd: MTMD planners unavailable ({type(_e).__name__}: {_e})", stacklevel=1)
