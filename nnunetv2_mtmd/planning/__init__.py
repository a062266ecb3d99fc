from nnunetv2_mtmd.planning.planners import nnUNetPlannerMTMD, nnUNetPlannerMTMDResEncL, nnUNetPlannerMTMDResEncM

__all__ = ["nnUNetPlannerMTMD", "nnUNetPlannerMTMDResEncM", "nnUNetPlannerMTMDResEncL"]
