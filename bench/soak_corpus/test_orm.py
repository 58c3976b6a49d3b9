import sqlalchemy as sa
from sqlalchemy.orm import scoped_session

from conftest import Item


def test_session_add_and_commit(Session):
    with Session() as session, session.begin():
        session.add(Item(name="a"))


def test_transaction_per_test(db_session):
    db_session.add(Item(name="rolled back"))
    db_session.flush()
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Item)) >= 1


def test_scoped_session_removed(engine):
    registry = scoped_session(sa.orm.sessionmaker(engine))
    try:
        registry.execute(sa.text("SELECT 1"))
    finally:
        registry.remove()


class TestClassScoped:
    def test_query(self, Session):
        with Session() as session:
            session.scalars(sa.select(Item)).all()

    def test_query_again(self, Session):
        with Session() as session:
            session.get(Item, 1)
