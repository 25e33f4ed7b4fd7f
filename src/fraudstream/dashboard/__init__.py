"""The Streamlit dashboard: pages over one read-only query module."""
