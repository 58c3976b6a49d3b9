"""``python -m pytest_dbleak merge ...`` and ``python -m pytest_dbleak stop``."""

from __future__ import annotations

import sys

from pytest_dbleak.cli import main

if __name__ == "__main__":
    sys.exit(main())
