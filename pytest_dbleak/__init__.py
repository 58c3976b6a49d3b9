"""pytest-dbleak: fail the test that leaks a database connection."""

from .backends import ServerInfo
from .fixtures import DbleakHandle, PoolStatus, Snapshot
from .results import CheckResult, Leak

__all__ = ["CheckResult", "DbleakHandle", "Leak", "PoolStatus", "ServerInfo", "Snapshot"]
__version__ = "0.1.0"
