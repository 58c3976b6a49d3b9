"""Result dataclasses: what a leak check found. No pytest import, JSON round-trip safe."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The kinds of leak, in the order a report lists them.
CHECKED_OUT = "checked_out"
GC_RETURN = "gc_return"
OPEN_TRANSACTION = "open_transaction"
UNDISPOSED_ENGINE = "undisposed_engine"
SERVER_CONNECTION = "server_connection"
FORK_SHARED = "fork_shared"
LOCK_WAIT = "lock_wait"  # not a connection (count 0): a statement stuck behind a leak
KINDS = (
    CHECKED_OUT,
    GC_RETURN,
    OPEN_TRANSACTION,
    UNDISPOSED_ENGINE,
    SERVER_CONNECTION,
    FORK_SHARED,
    LOCK_WAIT,
)

KIND_TITLES = {
    CHECKED_OUT: "checked-out connection never returned",
    GC_RETURN: "connection returned only by the garbage collector, never by close()",
    OPEN_TRANSACTION: "open transaction on a connection idle in a pool",
    UNDISPOSED_ENGINE: "engine created and never disposed",
    SERVER_CONNECTION: "server connection left open",
    FORK_SHARED: "pooled connection of the parent used in a child process",
    LOCK_WAIT: "statement stuck behind a lock that a transaction left open holds",
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
    # How many leaks of this kind at this stack were folded into this entry (issue 13:
    # 48 identical leaks read as one "48 x ..." entry); `count` stays the connections.
    occurrences: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Leak:
        data = dict(data)
        site = data.pop("site", None)
        stack = data.pop("stack", [])
        return cls(site=Site(**site) if site else None, stack=[Site(**s) for s in stack], **data)


@dataclass(frozen=True)
class Counts:
    """Numbers before and after a window, for reports and the HTML timeline."""

    server_connections: int = 0  # client connections of the session on the server
    threads_connected: int = 0
    checked_out: int = 0


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one leak check (one test, or one assert_no_leaks block).

    Frozen: built once at the window's end (see ``conclude``) and never changed after; a
    leak found later for the same test (a thread it left, a wider teardown it blocked)
    makes a new result (``adding``).
    """

    nodeid: str
    leaks: tuple[Leak, ...] = ()
    allowed: int = 0
    before: Counts = field(default_factory=Counts)
    after: Counts = field(default_factory=Counts)
    waited: float = 0.0  # seconds spent re-checking a suspected leak
    runs: int | None = None  # stress runs behind this result, for the leak rate
    stress: str | None = None  # which stress marker ran
    known: bool = False  # matched by the baseline: reported, not failed
    report_only: bool = False
    counter: str = "Threads_connected"  # the server's name for threads_connected

    def __post_init__(self) -> None:
        # Any iterable in, a tuple of grouped leaks kept (frozen: set once, here).
        object.__setattr__(self, "leaks", tuple(group_leaks(list(self.leaks))))

    def adding(self, leaks: Iterable[Leak], *, known: Knows | None = None) -> CheckResult:
        """A new result: this one's leaks and `leaks`, judged again against `known`."""
        return conclude(replace(self, leaks=(*self.leaks, *leaks), known=False), known=known)

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
            "counter": self.counter,
            "leaked": self.leaked,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        data = {k: v for k, v in data.items() if k not in ("leaked", "failed")}
        return cls(
            leaks=tuple(Leak.from_dict(x) for x in data.pop("leaks", [])),
            before=Counts(**data.pop("before", {})),
            after=Counts(**data.pop("after", {})),
            **data,
        )


# Baseline knowledge: whether a result's leaks are within what was recorded for its test.
Knows = Callable[[CheckResult], bool]


def conclude(draft: CheckResult, *, known: Knows | None = None) -> CheckResult:
    """`draft` as the final result: marked known when the baseline knows its leaks."""
    if known is not None and draft.leaks and not draft.known and known(draft):
        return replace(draft, known=True)
    return draft


# "server connection 5 of QueuePool ..." -> "server connections of QueuePool ...": the ids
# of a group are in its connection_ids, its rows in its processlist.
_CONNECTION_ID = re.compile(r"\bconnection \d+")
_PARENTHESIS = re.compile(r" \([^()]*\)")


def group_leaks(leaks: list[Leak]) -> list[Leak]:
    """Leaks of one kind with one user stack become one entry; nothing is dropped.

    The group keeps the first leak's place in the list, adds up counts and occurrences,
    and concatenates connection ids, processlist rows and (distinct) thread names.
    """
    groups: dict[tuple[str, tuple[Site, ...]], list[Leak]] = {}
    for leak in leaks:
        groups.setdefault((leak.kind, tuple(leak.stack)), []).append(leak)
    if len(groups) == len(leaks):
        return list(leaks)
    return [members[0] if len(members) == 1 else _merge(members) for members in groups.values()]


def _merge(members: list[Leak]) -> Leak:
    first = members[0]
    threads = list(dict.fromkeys(m.thread for m in members if m.thread))
    return Leak(
        kind=first.kind,
        count=sum(m.count for m in members),
        what=_merged_what([m.what for m in members]),
        site=first.site,
        stack=list(first.stack),
        thread=", ".join(threads) if threads else None,
        connection_ids=[i for m in members for i in m.connection_ids],
        processlist=[row for m in members for row in m.processlist],
        occurrences=sum(m.occurrences for m in members),
    )


def _merged_what(whats: list[str]) -> str:
    if len(set(whats)) == 1:
        return whats[0]
    shapes = {_CONNECTION_ID.sub("connections", w) for w in whats}
    if len(shapes) > 1:  # e.g. raw connections that differ in their "(user@host, Sleep)"
        shapes = {_PARENTHESIS.sub("", s) for s in shapes}
    if len(shapes) == 1:
        return shapes.pop().replace(" owns it", " owns them")
    return f"{whats[0]}; and {len(whats) - 1} more like it"
