"""The Streamlit app's pages: one thin script per page, plus shared state in ``common``.

Each page file is run by Streamlit (``st.Page``) as a script; it lays out widgets and calls
lprviz functions, plots and the viewer. Nothing here computes science.
"""
