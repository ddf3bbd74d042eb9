"""``python -m pyro_prune``: the ``pyro-prune`` command."""

from __future__ import annotations

import sys

from pyro_prune.cli import main

if __name__ == "__main__":
    sys.exit(main())
