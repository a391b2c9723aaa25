"""Unlearning Lens backend: model pairs, probing, attribution, layers, metrics, unlearning, reports."""
