"""``python -m reference_app.tests.serve``: ``python -m reference_app`` with the seed
regressions named in ``REFERENCE_APP_REGRESSIONS`` installed on its app, for the
multi-process leak tests. The server itself is the real one (``reference_app.__main__``).
"""

from __future__ import annotations

import sys

from flask import Flask

from reference_app import create_app
from reference_app.__main__ import main

from .regressions import install, regressions_from_env


def build() -> Flask:
    return install(create_app(), regressions_from_env())


if __name__ == "__main__":
    sys.exit(main(build=build))
