"""Inference with multi-domain models: the input checks of stock ``nnUNetv2_predict``
(:mod:`~nnunetv2_mtmd.inference.checks`)."""
