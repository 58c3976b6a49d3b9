"""PyMySQL connect time with its default SSL handling vs ``ssl_disabled=True``.

    python bench/pymysql_ssl.py [--n 40] [--host 127.0.0.1] [--port 3306] [--user root]

PyMySQL >= 1.2 builds an ``ssl.SSLContext`` (loading the system CA bundle) in every
``Connection.__init__`` unless ``ssl_disabled`` is given - also when the server has no
SSL at all, in which case the context is built and then never used. This measures
connect + close against the machine's own server (default 127.0.0.1:3306, root, no
password; nothing is created there), directly and through a SQLAlchemy ``NullPool``
engine (a new DBAPI connection per ``engine.connect()``), N times each, interleaved.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time

import _common as c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40, help="connects of each variant (default 40)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user", default="root")
    ap.add_argument("--password", default="")
    ap.add_argument("--budget", type=float, default=300, help="overall time budget (s)")
    args = ap.parse_args()

    import pymysql
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    start_load = c.load()
    deadline = c.Deadline(args.budget)
    target = dict(
        host=args.host, port=args.port, user=args.user, password=args.password, connect_timeout=5
    )
    url = sa.URL.create(
        "mysql+pymysql",
        username=args.user,
        password=args.password or None,
        host=args.host,
        port=args.port,
    )

    def engine(query: dict[str, str]) -> sa.Engine:
        return sa.create_engine(url.update_query_dict(query), poolclass=NullPool)

    engines = {
        "default": engine({}),
        "ssl_disabled=true": engine({"ssl_disabled": "true"}),
        "ssl_disabled=false": engine({"ssl_disabled": "false"}),
    }

    def raw(**kw: object) -> None:
        pymysql.connect(**target, **kw).close()  # type: ignore[arg-type]

    def through(e: sa.Engine) -> None:
        with e.connect():
            pass

    variants = {
        "PyMySQL connect + close, default options": lambda: raw(),
        "PyMySQL connect + close, ssl_disabled=True": lambda: raw(ssl_disabled=True),
        "SQLAlchemy NullPool engine.connect() + close, plain URL": lambda: through(
            engines["default"]
        ),
        "SQLAlchemy NullPool, URL ?ssl_disabled=true": lambda: through(
            engines["ssl_disabled=true"]
        ),
        "SQLAlchemy NullPool, URL ?ssl_disabled=false (see note)": lambda: through(
            engines["ssl_disabled=false"]
        ),
        "ssl.create_default_context() alone (no connection)": ssl.create_default_context,
    }

    # What the server offers, and whether a default connection actually used TLS.
    conn = pymysql.connect(**target)  # type: ignore[arg-type]
    with conn.cursor() as cur:
        cur.execute("SELECT @@version, @@have_ssl")
        version, have_ssl = cur.fetchone()
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        cipher = (cur.fetchone() or ("", ""))[1] or "none (plain text)"
    conn.close()

    print("# PyMySQL connect: default SSL handling vs ssl_disabled\n")
    print(
        c.machine_table(
            [
                ("server", f"{args.host}:{args.port} ({version}), have_ssl={have_ssl}"),
                ("TLS cipher of a default PyMySQL connection", cipher),
            ]
        )
    )
    print()

    for fn in variants.values():  # warm-up: dialect initialisation, imports
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.n):
        order = list(variants.items())
        if i % 2:
            order.reverse()
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        c.sample_load()
        if deadline.expired():
            break
    for e in engines.values():
        e.dispose()

    default = c.median(times["PyMySQL connect + close, default options"])
    rows = [
        (name, c.ms(c.median(v), 2), f"{c.ms(min(v), 1)} - {c.ms(max(v), 1)}", len(v))
        for name, v in times.items()
    ]
    print(f"## Median of {len(times[next(iter(times))])} interleaved runs\n")
    print(c.table(("variant", "median (ms)", "min - max (ms)", "runs"), rows))
    print()
    fast = c.median(times["PyMySQL connect + close, ssl_disabled=True"])
    print(
        f"`ssl_disabled=True` saves {c.ms(default - fast, 1)} ms per connection "
        f"({default / fast:.1f}x faster) against this server.\n"
    )
    print(
        "Note: SQLAlchemy passes URL query values to PyMySQL as strings, and PyMySQL "
        "tests `if not ssl_disabled`, so `?ssl_disabled=false` (a non-empty string) "
        "*also* disables SSL. Only omit the parameter to keep SSL; never write `=false`.\n"
    )
    print(c.busy_note(start_load))
    print(deadline.note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
