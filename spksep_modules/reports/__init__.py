"""Reports: what is read back from finished run folders, as text and figures.

Reading a run's training log, test results and summaries
(:mod:`~spksep_modules.reports.run_logs`), paired and seeded statistics
(:mod:`~spksep_modules.reports.stats`), the paper's tables (``spksep table``,
:mod:`~spksep_modules.reports.tables`) and its figures (``spksep plot``,
:mod:`~spksep_modules.reports.plots`). It builds on :mod:`spksep_modules.loading` and the
metrics; the spectrogram figure separates its mixture as ``spksep separate`` does
(``deploy.separate``), the one use it makes of another stage.
"""
