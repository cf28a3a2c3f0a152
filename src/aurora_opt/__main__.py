"""``python -m aurora_opt``: the ``aurora-opt`` command line."""

import sys

from .cli import main

sys.exit(main())
