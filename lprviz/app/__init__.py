"""The Streamlit app: ``entry`` builds the navigation, ``common`` holds shared state and
caches, ``pages/`` one thin script per page, ``server`` starts it (``lprviz app``). Nothing
here computes science.

Start it with ``lprviz app`` (or ``streamlit run app.py`` in a source checkout).
"""
