"""Training and evaluation.

Modules, each with one job:

* ``recipes``: the paper's training settings as typed, named, overridable recipes.
* ``train``: ``train(recipe, out_dir=..., data=DataSpec(...))`` on one process or many under ``torchrun``.
* ``evaluate``: clip- and video-level accuracy, per-class accuracy, confusion matrix, per-video predictions.
* ``predictor``: the one predictor and the one video-level averaging (``average_by_video``).
* ``inputs``: datasets and loaders of a run from ``mfnet.data``; ``schedule``: LR by step; ``optim``: SGD groups;
  ``checkpoints``: atomic training state with RNG; ``distributed``: process group and collectives; ``metrics``.
"""
