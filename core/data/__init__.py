"""Data: the QA schema and its loaders, the demo examples, uploads kept on disk."""
