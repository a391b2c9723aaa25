"""Scoring text under a model: encoding with templates (encoding), forward passes at the scored positions
(forward) and the per-token statistics of their next-token distributions (statistics)."""
