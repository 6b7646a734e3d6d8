"""``python -m dbrouter``: the same as the ``dbrouter`` command."""

import sys

from .cli import main

__all__ = []

sys.exit(main())
