"""Analyses of a pair: the probe, per-item scores, attribution and the layer views."""
