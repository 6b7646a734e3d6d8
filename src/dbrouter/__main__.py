"""``python -m dbrouter``: the same as the ``dbrouter`` command."""

import sys

from .cli import main

sys.exit(main())
