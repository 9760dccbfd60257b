"""Analysis of budgets: the critical-path sweep, the allocation search, reports and profiles.

Reports and profiles from usage telemetry (import the module you need; nothing optional
is imported here):

- :mod:`apportion.analysis.report`: per-agent percentiles, utilization, ceiling hits,
  flags, truncation against quality and recommended budgets (``apportion report``), from
  a dataset in memory;
- :mod:`apportion.analysis.window_report`: the same report of a database over a window,
  aggregated in the database (:mod:`apportion.analysis.aggregate`) and its daily rollups
  (what ``apportion report`` runs; a dashboard calls
  :func:`~apportion.analysis.window_report.report_database`);
- :mod:`apportion.analysis.page` and :mod:`apportion.analysis.figures`: its HTML page;
- :mod:`apportion.analysis.profile`: budgets files for the ``static`` policy
  (``apportion profile``);
- :mod:`apportion.analysis.ingest`: ChatDev call logs and OpenTelemetry GenAI span
  exports into a telemetry database (``apportion ingest``);
- :mod:`apportion.analysis.warm_start`: a predicting policy's need model warmed from the
  calls a database recorded;
- :mod:`apportion.analysis.stats`: the percentile and interval definitions they use.
"""
