"""Evaluation: the metric registry, split metrics and MIA, result files (ingest, write) and tradeoff tables."""
