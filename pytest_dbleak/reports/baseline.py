"""Release gating with a baseline: fail only on leaks that are new or larger than recorded.

No pytest import. Like pytest-memray's ``--fail-on-increase``, a suite with leaks it cannot
fix today records them once and from then on fails only when a test leaks *more*.

Semantics of ``--dbleak-baseline=PATH``:

* PATH does not exist: a **recording run**. Nothing is judged against a baseline, so the
  run behaves exactly as without the option (leaks fail unless ``--dbleak-report-only`` or
  an allowance covers them). At the end of the session :func:`save` writes every test that
  leaked, with its leaked counts per kind. Record with ``--dbleak-report-only`` to get a
  green recording run, review the file and commit it.
* PATH exists: a **gating run**. Each test's result is built with :meth:`Baseline.knows`
  as its baseline knowledge. A result is *known* when, for every kind, it leaked no
  more than the baseline recorded for that test: it is then reported (marked ``known``)
  but does not fail. A leak of a kind the baseline does not list for the test, a
  larger count, or a test that is not in the baseline at all is *new or larger* and fails
  as usual. The file is never rewritten by a gating run; to accept new leaks, or to shrink
  the baseline after fixes, delete it and record again.
* :meth:`Baseline.gone` lists recorded leaks that shrank or vanished, but only for tests
  that ran in this session: a recorded test that did not run (deselected, skipped by -k,
  on another shard, or deleted) says nothing about its leak, so it is never called gone.

What is recorded: raw leaked counts (``Leak.count`` summed per kind), whatever the
allowance or report-only setting was, so the baseline describes the code and not the
options of the run that recorded it. Tests that leaked nothing are not recorded.

The file is JSON, versioned, with sorted keys and one entry per line, so it diffs cleanly::

    {
      "tests": {
        "tests/test_app.py::test_pool": {
          "checked_out": 2
        }
      },
      "tool": "pytest-dbleak",
      "version": 1
    }
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dbleak.engine.errors import DbleakError
from pytest_dbleak.engine.files import write_atomic
from pytest_dbleak.engine.results import KINDS, CheckResult
from pytest_dbleak.reports.reporting import plural

log = logging.getLogger(__name__)

VERSION = 1
TOOL = "pytest-dbleak"

# Judgement statuses.
CLEAN = "clean"  # no leaks at all
KNOWN = "known"  # every kind within the recorded count
NEW = "new"  # leaks, and the test is not in the baseline
LARGER = "larger"  # in the baseline, but some kind leaked more (or a kind was not recorded)

Counts = dict[str, int]


def leaked_by_kind(result: CheckResult) -> Counts:
    """The result's leaked connections summed per kind, zero counts dropped."""
    counts: Counts = {}
    for leak in result.leaks:
        if leak.count > 0:
            counts[leak.kind] = counts.get(leak.kind, 0) + leak.count
    return counts


def _kind_order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), kind)


def _describe(counts: Mapping[str, int]) -> str:
    """{'checked_out': 2, 'gc_return': 1} -> '2 checked_out, 1 gc_return' (report order)."""
    return ", ".join(f"{counts[k]} {k}" for k in sorted(counts, key=_kind_order))


@dataclass(frozen=True)
class Judgement:
    """How one result compares to the baseline.

    ``grown`` maps each kind that leaked more than recorded to how many more (a kind the
    baseline does not list for the test counts from 0); it is empty exactly when the
    result is clean or known.
    """

    nodeid: str
    status: str  # CLEAN, KNOWN, NEW or LARGER
    current: Counts
    recorded: Counts | None  # None: the test is not in the baseline
    grown: Counts

    @property
    def known(self) -> bool:
        return self.status == KNOWN

    @property
    def failing(self) -> bool:
        """New or larger: the baseline does not excuse this result."""
        return self.status in (NEW, LARGER)

    def describe(self) -> str:
        """One line for a failure message or a log."""
        if self.status == CLEAN:
            return "no leaks"
        if self.status == KNOWN:
            return f"known leak, within the baseline ({_describe(self.recorded or {})})"
        if self.status == NEW:
            return f"new leak, not in the baseline: {_describe(self.current)}"
        recorded = self.recorded or {}
        growth = ", ".join(
            f"{kind} {recorded.get(kind, 0)} -> {self.current[kind]} (+{more})"
            for kind, more in sorted(self.grown.items(), key=lambda kv: _kind_order(kv[0]))
        )
        return f"larger than the baseline: {growth}"


@dataclass(frozen=True)
class Gone:
    """A recorded leak that shrank or vanished in a test that ran this session.

    ``fewer`` maps each recorded kind that leaked less to how many fewer connections.
    """

    nodeid: str
    fewer: Counts
    current: Counts

    @property
    def fixed(self) -> bool:
        """The test leaked nothing at all this time."""
        return not self.current

    def describe(self) -> str:
        return f"{self.nodeid} ({_describe(self.fewer)})"


@dataclass
class Baseline:
    """Recorded leaked counts per test nodeid and kind."""

    tests: dict[str, Counts]

    @classmethod
    def from_results(cls, results: Iterable[CheckResult]) -> Baseline:
        """What a recording run writes: every result that leaked, counts per kind."""
        tests: dict[str, Counts] = {}
        for result in results:
            counts = leaked_by_kind(result)
            if counts:
                # The same nodeid twice (a rerun plugin) keeps the worst of each kind.
                merged = tests.setdefault(result.nodeid, {})
                for kind, n in counts.items():
                    merged[kind] = max(merged.get(kind, 0), n)
        return cls(tests)

    @classmethod
    def from_dict(cls, data: Any, source: str = "baseline") -> Baseline:
        """Validate a parsed baseline file; DbleakError says what is wrong with it."""
        if not isinstance(data, dict):
            raise DbleakError(f"{source}: not a pytest-dbleak baseline (expected a JSON object)")
        version = data.get("version")
        if version != VERSION:
            newer = isinstance(version, int) and version > VERSION
            hint = " (written by a newer pytest-dbleak?)" if newer else ""
            raise DbleakError(
                f"{source}: unsupported baseline version {version!r}{hint}; "
                f"this pytest-dbleak reads version {VERSION}"
            )
        raw = data.get("tests")
        if not isinstance(raw, dict):
            raise DbleakError(f"{source}: 'tests' must be an object of nodeid -> counts")
        tests: dict[str, Counts] = {}
        for nodeid, counts in raw.items():
            if not isinstance(counts, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items()
            ):
                raise DbleakError(
                    f"{source}: {nodeid}: counts must map a kind to a non-negative integer"
                )
            unknown = sorted(set(counts) - set(KINDS))
            if unknown:
                # Kept, not dropped: a newer plugin may know the kind; it never matches here.
                log.warning("%s: %s: unknown leak kinds %s", source, nodeid, ", ".join(unknown))
            kept = {k: v for k, v in counts.items() if v > 0}
            if kept:
                tests[nodeid] = kept
        return cls(tests)

    def as_dict(self) -> dict[str, Any]:
        return {"tool": TOOL, "version": VERSION, "tests": self.tests}

    def dumps(self) -> str:
        """Stable text: sorted keys, one entry per line, trailing newline."""
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    def compare(self, result: CheckResult) -> Judgement:
        """Judge a result against the baseline without touching it."""
        current = leaked_by_kind(result)
        recorded = self.tests.get(result.nodeid)
        if not current:
            return Judgement(result.nodeid, CLEAN, current, recorded, {})
        base = recorded or {}
        grown = {k: n - base.get(k, 0) for k, n in current.items() if n > base.get(k, 0)}
        if not grown:
            state = KNOWN
        elif recorded is None:
            state = NEW
        else:
            state = LARGER
        return Judgement(result.nodeid, state, current, recorded, grown)

    def judge(self, result: CheckResult) -> Judgement:
        """How `result` compares to the baseline (`result` is frozen: nothing changes)."""
        return self.compare(result)

    def knows(self, result: CheckResult) -> bool:
        """Whether `result` is a known leak: the baseline knowledge a check's window end
        takes (``Detector.close(known=...)``), so its one result is born ``known``."""
        return self.compare(result).known

    def gone(self, results: Iterable[CheckResult]) -> list[Gone]:
        """Recorded leaks that shrank or vanished, among the tests that ran; by nodeid."""
        current_by_test: dict[str, Counts] = {}
        for result in results:
            if result.nodeid in self.tests:
                current_by_test[result.nodeid] = leaked_by_kind(result)
        out = []
        for nodeid in sorted(current_by_test):
            current = current_by_test[nodeid]
            fewer = {
                kind: n - current.get(kind, 0)
                for kind, n in self.tests[nodeid].items()
                if current.get(kind, 0) < n
            }
            if fewer:
                out.append(Gone(nodeid, fewer, current))
        return out

    def summary(self, results: Iterable[CheckResult], limit: int = 5) -> str:
        """One line for the terminal, e.g.
        'baseline: 3 known leaks still present, 1 gone: tests/x.py::test_y (2 checked_out)'.

        Counts are of tests: a known leak is a test within its recorded counts, a new or
        larger one a test that exceeded them. Gone tests are listed up to ``limit``.
        """
        results = list(results)
        judgements = [self.compare(r) for r in results]
        known = sum(1 for j in judgements if j.known)
        failing = sum(1 for j in judgements if j.failing)
        gone = self.gone(results)
        parts = [f"{plural(known, 'known leak')} still present"]
        if failing:
            parts.append(f"{failing} new or larger")
        text = "baseline: " + ", ".join(parts)
        if gone:
            listed = "; ".join(g.describe() for g in gone[:limit])
            more = f"; and {len(gone) - limit} more" if len(gone) > limit else ""
            text += f", {len(gone)} gone: {listed}{more}"
        else:
            text += ", none gone"
        return text


def load(path: str | os.PathLike[str]) -> Baseline | None:
    """The baseline at path, or None when there is none yet (a recording run).

    A file that exists but cannot be read or parsed raises DbleakError: silently
    re-recording over a corrupt baseline would excuse every leak.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DbleakError(f"cannot read the baseline {target}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DbleakError(f"{target}: not valid JSON ({exc})") from None
    return Baseline.from_dict(data, source=str(target))


def save(path: str | os.PathLike[str], results: Iterable[CheckResult]) -> Baseline:
    """Record the leaks of results to path, atomically; returns what was written."""
    baseline = Baseline.from_results(results)
    target = write_atomic(path, baseline.dumps())
    log.debug("recorded %d leaking tests to baseline %s", len(baseline.tests), target)
    return baseline


def recorded_line(path: str | os.PathLike[str], baseline: Baseline) -> str:
    """The terminal line of a recording run."""
    n = len(baseline.tests)
    connections = sum(sum(c.values()) for c in baseline.tests.values())
    return (
        f"baseline: recorded {plural(n, 'leaking test')} "
        f"({plural(connections, 'connection')}) to {os.fspath(path)}"
    )
