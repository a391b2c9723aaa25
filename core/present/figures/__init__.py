"""Plotly figures, one module per dashboard page (tradeoffs, probe, attribution, layers, robustness), shared by the
dashboard and the reports; they take tidy frames and result dataclasses, never tensors. `common` holds the palette
and the escaping every module uses."""
