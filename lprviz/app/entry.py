"""The app's entry script: page config and navigation.

``lprviz app`` (:mod:`lprviz.app.server`) runs a two-line script that calls :func:`main`;
the top-level ``app.py`` of a source checkout calls it too, so both start the same app.
"""

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"


def main() -> None:
    """Configure the page and run the selected page script."""
    st.set_page_config(page_title="lprviz: local prediction rigidity", layout="wide")
    nav = st.navigation(
        [
            st.Page(PAGES / "explore.py", title="Explore", url_path="explore", default=True),
            st.Page(PAGES / "training_set.py", title="Training set", url_path="training-set"),
            st.Page(PAGES / "compare.py", title="Compare", url_path="compare"),
            st.Page(PAGES / "improve.py", title="Improve", url_path="improve"),
            st.Page(PAGES / "validate.py", title="Validate", url_path="validate"),
            st.Page(PAGES / "learn.py", title="Learn", url_path="learn"),
            st.Page(PAGES / "export.py", title="Export", url_path="export"),
        ]
    )
    nav.run()


if __name__ == "__main__":
    main()
