"""Training: what a recipe's ``train.py`` runs around SpeechBrain's ``Brain.fit``.

The Brain subclasses (:mod:`~spksep_modules.training.brains`), the recipe plumbing that
composes the yaml, starts or resumes a run folder and turns user mistakes into one-line
errors (:mod:`~spksep_modules.training.recipe`), and the per-step policies the Brains
apply: skipping non-finite losses (:mod:`~spksep_modules.training.nonfinite`), a global
batch that means the same on any number of processes
(:mod:`~spksep_modules.training.global_batch`), a compute budget with learning-rate
cooldown (:mod:`~spksep_modules.training.budget`) and optional TensorBoard logging
(:mod:`~spksep_modules.training.tensorboard_log`). It builds on the models, losses, data
and :mod:`spksep_modules.loading`, never on deployment or reports.
"""
