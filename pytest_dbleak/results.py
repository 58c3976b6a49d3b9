"""Result dataclasses: what a leak check found. No pytest import, JSON round-trip safe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The kinds of leak, in the order a report lists them.
CHECKED_OUT = "checked_out"
GC_RETURN = "gc_return"
OPEN_TRANSACTION = "open_transaction"
UNDISPOSED_ENGINE = "undisposed_engine"
SERVER_CONNECTION = "server_connection"
FORK_SHARED = "fork_shared"
KINDS = (
    CHECKED_OUT, GC_RETURN, OPEN_TRANSACTION, UNDISPOSED_ENGINE, SERVER_CONNECTION, FORK_SHARED
)

KIND_TITLES = {
    CHECKED_OUT: "checked-out connection never returned",
    GC_RETURN: "connection returned only by the garbage collector, never by close()",
    OPEN_TRANSACTION: "open transaction on a connection idle in a pool",
    UNDISPOSED_ENGINE: "engine created and never disposed",
    SERVER_CONNECTION: "server connection left open",
    FORK_SHARED: "pooled connection of the parent used in a child process",
}


@dataclass(frozen=True)
class Site:
    """A frame of user code: where a connection was checked out, opened or created."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass
class Leak:
    """One thing a test left behind."""

    kind: str
    count: int
    what: str  # one line: what exactly is left
    site: Site | None = None
    stack: list[Site] = field(default_factory=list)  # user frames, outermost first
    thread: str | None = None
    connection_ids: list[int] = field(default_factory=list)
    processlist: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Leak:
        data = dict(data)
        site = data.pop("site", None)
        stack = data.pop("stack", [])
        return cls(
            site=Site(**site) if site else None, stack=[Site(**s) for s in stack], **data
        )


@dataclass
class Counts:
    """Numbers before and after a window, for reports and the HTML timeline."""

    server_connections: int = 0  # client connections of the session on the server
    threads_connected: int = 0
    checked_out: int = 0


@dataclass
class CheckResult:
    """The verdict of one leak check (one test, or one assert_no_leaks block)."""

    nodeid: str
    leaks: list[Leak] = field(default_factory=list)
    allowed: int = 0
    before: Counts = field(default_factory=Counts)
    after: Counts = field(default_factory=Counts)
    waited: float = 0.0  # seconds spent re-checking a suspected leak
    runs: int | None = None  # stress runs behind this result, for the leak rate
    stress: str | None = None  # which stress marker ran
    known: bool = False  # matched by the baseline: reported, not failed
    report_only: bool = False

    @property
    def leaked(self) -> int:
        return sum(leak.count for leak in self.leaks)

    @property
    def failed(self) -> bool:
        return self.leaked > self.allowed and not self.known and not self.report_only

    def as_dict(self) -> dict[str, Any]:
        # Built by hand: this runs for every test, and dataclasses.asdict deep-copies.
        return {
            "nodeid": self.nodeid,
            "leaks": [leak.as_dict() for leak in self.leaks],
            "allowed": self.allowed,
            "before": vars(self.before).copy(),
            "after": vars(self.after).copy(),
            "waited": self.waited,
            "runs": self.runs,
            "stress": self.stress,
            "known": self.known,
            "report_only": self.report_only,
            "leaked": self.leaked,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        data = {k: v for k, v in data.items() if k not in ("leaked", "failed")}
        return cls(
            leaks=[Leak.from_dict(x) for x in data.pop("leaks", [])],
            before=Counts(**data.pop("before", {})),
            after=Counts(**data.pop("after", {})),
            **data,
        )
