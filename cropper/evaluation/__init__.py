"""Measuring crops the way the benchmarks do: ``cropper eval crop|scores|boxes``.

:mod:`cropper.data.metrics` holds the metrics themselves; this package reads a dataset's
ground truth and a run's predictions, runs a cropper (or a baseline) over a split,
and writes the report.
"""
