"""lprviz app: ``streamlit run app.py`` (source checkout; ``lprviz app`` when installed).

Thin entry: the app lives in :mod:`lprviz.app`.
"""

from lprviz.app.entry import main

main()
