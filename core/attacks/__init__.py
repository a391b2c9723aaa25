"""Robustness attacks that try to bring forgotten answers back, and their runner."""
