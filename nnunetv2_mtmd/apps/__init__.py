"""The applications on top of the library: the real-data ablation study (:mod:`~nnunetv2_mtmd.apps.study`,
``nnUNetv2_mtmd_study``), the benchmark against stock nnU-Net (:mod:`~nnunetv2_mtmd.apps.benchmark`,
``nnUNetv2_mtmd_benchmark``) and the demo (:mod:`~nnunetv2_mtmd.apps.demo`, ``nnUNetv2_mtmd_demo``), on
one small shared :mod:`~nnunetv2_mtmd.apps.workspace`.

Apps import the library; the library (domains, conversion, planning, architectures, losses, training,
inference, evaluation) never imports an app: tests/test_layers.py enforces it (docs/design.md, "Layers").
"""
