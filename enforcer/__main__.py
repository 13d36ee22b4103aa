"""``python -m enforcer``: the same command line as the ``enforcer`` console script (enforcer/cli.py)."""

import sys

from enforcer.cli import main

sys.exit(main())
