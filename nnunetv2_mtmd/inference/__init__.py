"""Inference with multi-domain models: the room for everything after training.

- :mod:`~nnunetv2_mtmd.inference.model`: a trained model in nnU-Net's results folder: find a fold's
  checkpoint (``locate_model_folder``, ``model_location``) and rebuild its network as nnU-Net's
  predictor does (``load_trained_network``; used by the embedding analysis).
- :mod:`~nnunetv2_mtmd.inference.predictor`: ``load_predictor``, nnU-Net's own ``nnUNetPredictor`` for
  a model folder and folds, built as ``nnUNetv2_predict`` builds it (the one in-process prediction
  entry of the plugin).
- :mod:`~nnunetv2_mtmd.inference.checks`: the input checks stock ``nnUNetv2_predict`` runs for
  multi-domain models (every case has its domain code channel, with a known code) before anything is
  written. The hook into nnU-Net's predictor that runs them is an upstream patch and lives in
  :mod:`nnunetv2_mtmd.compat` (``install_predictor_input_check``, re-exported by ``checks``).

Layering: inference builds on the library's lower rooms (domains, architectures, compat, io) and
does not import training (the trainer class of a checkpoint is looked up by name through nnU-Net at
run time); the safe checkpoint reader it uses is ``io.load_checkpoint_file``, below both rooms.
Training imports nothing from here: the trainer installs the predictor's input check through compat.
"""
