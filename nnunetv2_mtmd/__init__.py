"""nnunetv2-mtmd: multi-task, multi-domain segmentation of sparse datasets as an nnU-Net v2 plugin.

Method: Boutillon et al., MICCAI 2021 and the 2022 extension (DSBN, per-domain heads, multi-scale
supervised contrastive regularization, multi-joint anatomical priors). See README.md.

Importing this package is cheap: nothing from nnunetv2's training code is imported here.
"""

__version__ = "0.1.0"
