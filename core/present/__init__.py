"""Presentation: plotly figures per view, token HTML, the report."""
