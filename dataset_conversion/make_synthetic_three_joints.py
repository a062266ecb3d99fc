"""Write the synthetic three-joint MR-like datasets into nnU-Net's raw folder.

A thin wrapper around ``nnUNetv2_mtmd_synthetic`` (code: ``nnunetv2_mtmd.conversion.synthetic``);
every option is passed through, see ``--help``. Without ``-o`` it writes into ``$nnUNet_raw``:

    $nnUNet_raw/
      Dataset911_SynthAnkle/      calcaneus, talus, tibia          (sagittal, T1-like)
      Dataset912_SynthKnee/       femur, fibula, patella, tibia    (sagittal, PD-like)
      Dataset913_SynthShoulder/   humerus, scapula                 (coronal, T2-like)
        dataset.json              channel_names {"0": "MRI"}, labels, numTraining, file_ending
        imagesTr/case000_0000.nii.gz ...   float32, array (Z, Y, X), Z = slices
        labelsTr/case000.nii.gz ...        uint8, 0 = background
        imagesTs/, labelsTs/               only with --test-cases M (labelsTs is for evaluation)

Usage:
    python dataset_conversion/make_synthetic_three_joints.py [-o DIR] [--cases 10] [--test-cases 0]
        [--seed 0] [--shape Z Y X] [--ids 911 912 913] [--overwrite] [--report]
"""

from __future__ import annotations

from nnunetv2_mtmd.cli.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
