"""Every piece of upstream code the plugin copies or patches, in one place.

nnunetv2 and dynamic-network-architectures offer no hook for a few things the plugin needs; where a
function had to be copied (or an upstream method wrapped), the copy lives here, next to the name of the
upstream object it mirrors. tests/test_compat.py compares the source of each upstream object
(a hash of ``inspect.getsource``) with the one the copy was written against: on the recorded upstream
version a change fails the test and names what to re-check; on any other installed version the test
is skipped with that message (CI installs the recorded versions through .ci/constraints.txt).
docs/design.md, "Upstream code".
"""

from __future__ import annotations

from typing import Any

import numpy as np


# ------------------------------------------------------------------- nnunetv2 fingerprint extraction
def compute_fingerprint(dataset_name: str) -> dict[str, Any]:
    """nnU-Net's dataset fingerprint, computed in this process (the benchmark's preparation).

    Mirrors ``DatasetFingerprintExtractor.run`` (nnunetv2 2.8.1) without its worker pool.

    Same per-case analysis (``DatasetFingerprintExtractor.analyze_case``) and aggregation as
    ``nnUNetv2_extract_fingerprint``; only the spawn worker pool is skipped (its start-up, which
    re-imports nnU-Net in every worker, costs 10-40 s on a busy 2-core machine, more than the work)."""
    from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed

    fpe = DatasetFingerprintExtractor(dataset_name, 1)
    first = next(iter(fpe.dataset.values()))["images"][0]
    rw = determine_reader_writer_from_dataset_json(fpe.dataset_json, first)
    n_samples = int(fpe.num_foreground_voxels_for_intensitystats // len(fpe.dataset))
    results = [DatasetFingerprintExtractor.analyze_case(v["images"], v["label"], rw, n_samples)
               for v in fpe.dataset.values()]
    n_ch = len(fpe.dataset_json["channel_names"])
    fg = [np.concatenate([r[2][i] for r in results]) for i in range(n_ch)]
    stats = {}
    for i in range(n_ch):
        p005, med, p995 = np.percentile(fg[i], (0.5, 50.0, 99.5))
        stats[i] = {"mean": float(np.mean(fg[i])), "median": float(med), "std": float(np.std(fg[i])),
                    "min": float(np.min(fg[i])), "max": float(np.max(fg[i])),
                    "percentile_99_5": float(p995), "percentile_00_5": float(p005)}
    fingerprint = {"spacings": [r[1] for r in results], "shapes_after_crop": [r[0] for r in results],
                   "foreground_intensity_properties_per_channel": stats,
                   "median_relative_size_after_cropping": np.median([r[4] for r in results], 0)}
    out = join(nnUNet_preprocessed, dataset_name)
    maybe_mkdir_p(out)
    save_json(fingerprint, join(out, "dataset_fingerprint.json"))
    return fingerprint
