"""Deployment: everything that runs a trained separator outside train.py.

Separating users' files (:mod:`~spksep_modules.deploy.separate`, with
``PretrainedSeparator``), writing a self-contained package folder
(:mod:`~spksep_modules.deploy.package`), exporting to TorchScript/ONNX
(:mod:`~spksep_modules.deploy.export`), chunk-by-chunk streaming of plain and
speaker-conditioned models (:mod:`~spksep_modules.deploy.streaming`,
:mod:`~spksep_modules.deploy.streaming_conditioned`); separation processes keep freed
memory for reuse (:mod:`spksep_modules.allocator`, shared with training).
Turning a folder into a separator is :mod:`spksep_modules.loading`'s job; this stage
builds on it and never on training or reports.
"""
