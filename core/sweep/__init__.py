"""Sweeps on a Ray cluster: `evaluate`, `robustness` and `unlearn` with `--ray`, one Ray task per model, attack or
run, the results in the usual layout on shared storage (see docs/SCALING.md)."""
