# PYTHON_ARGCOMPLETE_OK
"""``python -m exchange``: the same as the ``exchange`` command."""

import sys

from exchange.cli import main

sys.exit(main())
