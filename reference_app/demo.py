"""Demo data for ``flask --app reference_app init-db --demo``. Idempotent."""

from __future__ import annotations

from sqlalchemy import select

from .auth import hash_password
from .extensions import db
from .models import Buggy, Location, Role, User

PASSWORD_ENV = "REFERENCE_APP_DEMO_PASSWORD"

LOCATIONS = (
    ("Main Lobby", "Reception and hotel entrance"),
    ("Beach Club", "Pier and beach bar"),
    ("Spa", "Wellness centre"),
    ("Marina", "Boat harbour"),
    ("Golf House", "Clubhouse at the first tee"),
)
BUGGIES = ("B-01", "B-02", "B-03")
USERS = (("admin", Role.ADMIN), ("driver1", Role.DRIVER), ("guest1", Role.GUEST))


def seed_demo(password: str) -> dict[str, int]:
    """Add what is missing; existing rows (and passwords) are left alone."""
    added = {"locations": 0, "buggies": 0, "users": 0}
    known_locations = set(db.session.scalars(select(Location.name)))
    for name, description in LOCATIONS:
        if name not in known_locations:
            db.session.add(Location(name=name, description=description))
            added["locations"] += 1
    users = {user.username: user for user in db.session.scalars(select(User))}
    for username, role in USERS:
        if username not in users:
            users[username] = User(
                username=username, password_hash=hash_password(password), role=role.value
            )
            db.session.add(users[username])
            added["users"] += 1
    db.session.flush()
    known_buggies = set(db.session.scalars(select(Buggy.code)))
    for code in BUGGIES:
        if code not in known_buggies:
            driver = users["driver1"] if code == BUGGIES[0] else None
            db.session.add(Buggy(code=code, driver_id=driver.id if driver else None))
            added["buggies"] += 1
    db.session.commit()
    return added
