"""Download buttons any page can put under a chart or a table: PNG / SVG / PDF images and CSV.

Images are rendered only when their button is clicked (Streamlit's deferred download data), by the one warm export
browser of core.present.report.export.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.present.report.export import EXPORT_FORMATS, export_available, figure_bytes
from core.present.report.parts import frame_to_csv, slug


def chart_downloads(figure: go.Figure, name: str, *, key: str | None = None) -> None:
    """PNG, SVG and PDF download buttons for `figure`, saved as `<name>.<format>`; `key` tells apart two of a name."""
    if not export_available():
        st.caption("Image export needs Chromium (apt-get install chromium, or set BROWSER_PATH).")
        return
    stem = slug(name)
    columns = st.columns(len(EXPORT_FORMATS))
    for column, (format, mime) in zip(columns, EXPORT_FORMATS.items(), strict=True):
        column.download_button(
            format.upper(),
            data=partial(figure_bytes, figure, format),
            file_name=f"{stem}.{format}",
            mime=mime,
            key=f"export_{key or stem}_{format}",
            on_click="ignore",
            help=f"Download this chart as {format.upper()}",
        )


def table_download(frame: pd.DataFrame, name: str, *, key: str | None = None) -> None:
    """A CSV download button for `frame`, saved as `<name>.csv`."""
    stem = slug(name)
    st.download_button(
        "CSV",
        data=frame_to_csv(frame),
        file_name=f"{stem}.csv",
        mime="text/csv",
        key=f"export_{key or stem}_csv",
        on_click="ignore",
        help="Download this table as CSV",
    )


def chart(figure: go.Figure, name: str, *, key: str, container: Any = st, **options: Any) -> Any:
    """`figure` drawn under `key` in `container` (st or a column), with its image download buttons saved as
    `<name>.<format>`; `options` pass on to st.plotly_chart (a selection event, which is returned)."""
    event = container.plotly_chart(figure, key=key, **options)
    chart_downloads(figure, name, key=key)
    return event


def csv_download(frame: pd.DataFrame, label: str, file_name: str, *, key: str) -> None:
    """A labelled download button for the whole of `frame` as CSV, under the table a page shows."""
    st.download_button(
        label, frame.to_csv(index=False), file_name=file_name, mime="text/csv", key=key, on_click="ignore"
    )
