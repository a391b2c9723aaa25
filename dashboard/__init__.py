"""Unlearning Lens dashboard (Streamlit). Pages read widgets, call core/, and draw core's figures."""
