"""Experiments over many runs, without JAX: config files and overrides (cli), sweeps of an
experiment file's variants (sweep), reading and grouping finished runs (runs), their statistics (stats), plots,
reports (report), and the reproduction suite's verdicts per claim of the paper (verdicts, suite).

Importing any of these modules imports no JAX: a sweep imports the study code only inside the
function that executes a run, so planning, dry runs, reports and verdicts start fast.
"""
