"""Former home of the split writers, now :mod:`nnunetv2_mtmd.training.splits` (the trainer writes the
domain-stratified split, and training sits below evaluation: docs/design.md, "Layers")."""

from nnunetv2_mtmd.training.splits import (  # noqa: F401
    DEFAULT_SEED,
    SCHEMES,
    SplitTarget,
    describe_splits,
    domain_stratified_kfold,
    find_split_target,
    group_by_domain,
    leave_one_out_splits,
    make_splits,
    write_splits,
)
