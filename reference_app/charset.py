"""utf8mb4 everywhere: the tables' character set, and the database ``init-db`` makes.

A stock MariaDB creates databases as latin1 and tables inherit it: a guest's
name with an emoji is then a 500 (``Illegal mix of collations``). Every table
declares utf8mb4 itself, whatever its database's default, and connections ask
for utf8mb4.

``utf8mb4_unicode_520_ci`` (UCA 5.2, in MySQL >= 5.6 and MariaDB >= 10.0):
emoji are told apart (``utf8mb4_unicode_ci``, UCA 4.0, weighs every 4-byte
character the same, so "🚌 Stop" and "🚕 Stop" would collide on a unique
name), while a combining sequence equals its precomposed form and case and
accents are ignored ("René" and "rene" are the same username).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)

CHARSET = "utf8mb4"
COLLATION = "utf8mb4_unicode_520_ci"
TABLE_OPTIONS = {"mysql_charset": CHARSET, "mysql_collate": COLLATION}


@dataclass(frozen=True)
class DatabaseCheck:
    """What ``ensure_database`` found or did, as lines for the operator."""

    created: bool
    notes: tuple[str, ...]


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def ensure_database(url: URL, connect_args: dict[str, object] | None = None) -> DatabaseCheck:
    """Create ``url``'s database as utf8mb4 if it is missing; note an existing
    database or table whose character set is not utf8mb4."""
    name = url.database
    if not name:
        return DatabaseCheck(False, ("DATABASE_URL names no database",))
    # database="" (URL.set ignores None): connect to the server, not to the database.
    engine = create_engine(
        url.set(database=""), poolclass=NullPool, connect_args=dict(connect_args or {})
    )
    try:
        with engine.connect() as connection:
            return _ensure(connection, name)
    finally:
        engine.dispose()


def _ensure(connection: Connection, name: str) -> DatabaseCheck:
    found = connection.execute(
        text(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :name"
        ),
        {"name": name},
    ).first()
    if found is None:
        connection.execute(
            text(f"CREATE DATABASE {_quoted(name)} CHARACTER SET {CHARSET} COLLATE {COLLATION}")
        )
        connection.commit()
        return DatabaseCheck(True, (f"database {name} created ({CHARSET}, {COLLATION})",))
    notes: list[str] = []
    charset, collation = found
    if charset != CHARSET:
        notes.append(
            f"database {name} has the default character set {charset} ({collation}), "
            f"not {CHARSET}: the app's tables declare {CHARSET} themselves; to change the "
            f"default: ALTER DATABASE {_quoted(name)} CHARACTER SET {CHARSET} COLLATE {COLLATION}"
        )
    tables = connection.execute(
        text(
            "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = :name AND TABLE_TYPE = 'BASE TABLE' "
            "AND TABLE_COLLATION NOT LIKE :prefix ORDER BY TABLE_NAME"
        ),
        {"name": name, "prefix": f"{CHARSET}\\_%"},
    ).all()
    for table, table_collation in tables:
        notes.append(
            f"table {table} is {table_collation}, not {CHARSET}: ALTER TABLE {_quoted(table)} "
            f"CONVERT TO CHARACTER SET {CHARSET} COLLATE {COLLATION}"
        )
    return DatabaseCheck(False, tuple(notes))
