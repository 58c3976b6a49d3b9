"""How long a run takes when a leak blocks a session fixture's teardown (issue 17).

    python bench/never_hangs.py [--reps 2] [--limit 60]

The 20-line module of the issue: a session fixture ``create_all()`` -> ``drop_all()`` +
``dispose()``, one clean test, one test that keeps a ``Session`` after a ``SELECT``.
Side by side: the lock watch at its default bound (5 s), at 1 s, and turned off
(``--dbleak-lock-wait=0``, what a run without the watch does: MySQL waits a year for the
metadata lock), each with the leak last (alone by node id) and first in the run. A run
still going at ``--limit`` is killed and reads "hung".
"""

from __future__ import annotations

import argparse

import _common as c

MODULE = """
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

KEEP = []


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(scope="session")
def engine(dbleak_mysql_url):
    engine = sa.create_engine(dbleak_mysql_url)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def test_a_leaks(engine):
    session = Session(engine)
    session.execute(sa.select(Item)).all()
    KEEP.append(session)


def test_b_clean(engine):
    with Session(engine) as session:
        session.execute(sa.select(Item)).all()
"""

MODES = {
    "watch, default bound (5 s)": (),
    "watch, --dbleak-lock-wait=1": ("--dbleak-lock-wait=1",),
    "no watch (--dbleak-lock-wait=0)": ("--dbleak-lock-wait=0",),
}
SELECTIONS = {"leak alone (last)": ("test_hang.py::test_a_leaks",), "full run": ()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--limit", type=float, default=60.0)
    args = parser.parse_args()
    start_load = c.load()
    work = c.Workdir("never-hangs")
    (work.path / "test_hang.py").write_text(MODULE)
    env = work.env(PYTHONPATH=str(c.REPO))
    walls: dict[tuple[str, str], list[float | None]] = {}
    for _ in range(args.reps):
        for mode, flags in MODES.items():
            for selection, chosen in SELECTIONS.items():
                cmd = (*c.PYTEST, "-p", "pytest_dbleak.plugin", "--dbleak", "-q", *flags, *chosen)
                try:
                    wall, _ = c.run(
                        cmd, cwd=work.path, env=env, timeout=args.limit, ok_codes=(0, 1, 6)
                    )
                except c.RunFailed as exc:
                    if "timed out" not in str(exc):
                        raise
                    wall = None
                walls.setdefault((mode, selection), []).append(wall)
                c.sample_load()
    print(c.machine_table([("limit", f"{args.limit:g} s")]))
    rows = []
    for (mode, selection), times in walls.items():
        done = [t for t in times if t is not None]
        hung = len(times) - len(done)
        rows.append(
            (
                mode,
                selection,
                c.s(c.median(done)) if done else "-",
                f"{hung} of {len(times)}" if hung else "0",
            )
        )
    print(c.table(("lock watch", "selection", "median wall (s)", "hung (killed)"), rows))
    print(c.busy_note(start_load))
    print(work.report_cleanup())


if __name__ == "__main__":
    main()
