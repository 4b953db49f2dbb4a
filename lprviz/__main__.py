"""``python -m lprviz``: the ``lprviz`` command."""

import sys

from lprviz.cli import main

sys.exit(main())
