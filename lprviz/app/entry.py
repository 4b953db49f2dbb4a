"""The app's entry script: page config, the shared sidebar, navigation.

``lprviz app`` (:mod:`lprviz.app.server`) runs a two-line script that calls :func:`main`;
the top-level ``app.py`` of a source checkout calls it too, so both start the same app.
Streamlit's entrypoint pattern: this runs on every rerun of every page, draws the sidebar
(:func:`lprviz.app.state.sidebar`) and then the selected page, which reads the settings.
"""

from pathlib import Path

import streamlit as st

from lprviz import process
from lprviz.app import common, state

PAGES = Path(__file__).resolve().parent / "pages"


def main() -> None:
    """Configure the page, draw the sidebar, run the selected page."""
    process.small_pages()  # the server's process is the app's own (idempotent, ~1 us)
    st.set_page_config(page_title="lprviz: local prediction rigidity", layout="wide")
    state.keep_across_pages()
    nav = st.navigation(
        [
            st.Page(PAGES / "explore.py", title="Explore", url_path="explore", default=True),
            st.Page(PAGES / "training_set.py", title="Training set", url_path="training-set"),
            st.Page(PAGES / "compare.py", title="Compare", url_path="compare"),
            st.Page(PAGES / "improve.py", title="Improve", url_path="improve"),
            st.Page(PAGES / "validate.py", title="Validate", url_path="validate"),
            st.Page(PAGES / "learn.py", title="Learn", url_path="learn"),
            st.Page(PAGES / "export.py", title="Export", url_path="export"),
            st.Page(PAGES / "summary.py", title="Summary", url_path="summary"),
        ]
    )
    with common.guarded():
        state.sidebar()
    nav.run()


if __name__ == "__main__":
    main()
