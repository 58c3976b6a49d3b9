"""What a garbage collection before a leak verdict costs in a process holding a large heap.

    python bench/gc_cost.py [--objects 2000000] [--runs 7]

Before judging a suspicion that a collection could clear (a connection proxy dropped
inside a reference cycle), the detector collects. It used to run ``gc.collect()`` - a
full collection, which walks every tracked object of the process - for every such
suspicion; it now collects generation 1 first (what the test just made lives in the young
generations) and runs the full collection only for a suspicion that outlived it.

Side by side, in this process after it allocated ``--objects`` long-lived container
objects (a large test session: ORM models, fixtures, caches):

* ``gc.collect()`` (full) vs ``gc.collect(1)``, each right after a test-sized batch of
  young garbage: medians of ``--runs``;
* whether generation 1 gives back a pooled connection dropped in a reference cycle made
  during the "test" (the case the collection is for): the pool's checked-out count after
  each kind of collection, on a SQLite pool (no server needed).
"""

from __future__ import annotations

import argparse
import gc
import time

import _common as c
import sqlalchemy as sa


def big_heap(n: int) -> list[dict[str, object]]:
    heap = [{"i": i, "l": [i]} for i in range(n // 2)]
    gc.collect()  # promote it all to the oldest generation, as a long session would
    return heap


def young_garbage() -> None:
    for _ in range(200):
        a: dict[str, object] = {}
        b = {"a": a}
        a["b"] = b  # a cycle only a collection frees


def timed(generation: int) -> float:
    young_garbage()
    started = time.perf_counter()
    gc.collect(generation)
    return time.perf_counter() - started


def dropped_in_a_cycle(engine: sa.engine.Engine) -> None:
    class Holder:
        pass

    holder = Holder()
    holder.conn = engine.connect()  # type: ignore[attr-defined]
    holder.me = holder  # type: ignore[attr-defined]


def returned_by(generation: int) -> int:
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool)
    dropped_in_a_cycle(engine)
    before = engine.pool.checkedout()  # type: ignore[attr-defined]
    gc.collect(generation)
    after = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    return before - after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    print(c.machine_table())
    heap = big_heap(args.objects)
    tracked = len(gc.get_objects())
    full = [timed(2) for _ in range(args.runs)]
    young = [timed(1) for _ in range(args.runs)]
    rows = [
        ["gc.collect() (full, before)", c.ms(c.median(full), 2), returned_by(2)],
        ["gc.collect(1) (young, first now)", c.ms(c.median(young), 3), returned_by(1)],
    ]
    print(f"tracked objects in the process: {tracked:,}")
    print(
        c.table(
            ["collection", "median ms", "connections a cycle held, given back"],
            rows,
        )
    )
    del heap


if __name__ == "__main__":
    main()
