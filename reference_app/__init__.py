"""The reference Flask application: the seed's buggy service, without its leaks.

``flask --app reference_app`` finds ``create_app``; ``shutdown_app`` releases
what an app holds (scheduler, sockets, background tasks, pooled connections).
"""

from .factory import create_app
from .lifecycle import shutdown_app

__all__ = ["create_app", "shutdown_app"]
