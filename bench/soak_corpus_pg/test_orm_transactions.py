"""SQLAlchemy ORM tests on the "transactional test" recipe: each test runs inside an
outer transaction on one connection, its own commits become SAVEPOINT releases, and the
fixture rolls everything back at teardown."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from conftest import Customer, Order


@pytest.fixture
def customer(db_session):
    c = Customer(email="fixture@example.com", name="Fixture")
    db_session.add(c)
    db_session.commit()  # a SAVEPOINT release: the outer transaction rolls it back
    return c


def test_commit_is_rolled_back_by_the_fixture(db_session, customer):
    assert (
        db_session.scalar(
            sa.select(sa.func.count())
            .select_from(Customer)
            .where(Customer.email == "fixture@example.com")
        )
        == 1
    )


def test_fixture_rows_are_gone_in_the_next_test(db_session):
    assert (
        db_session.scalar(sa.select(Customer).where(Customer.email == "fixture@example.com"))
        is None
    )


def test_relationship_and_eager_load(db_session, customer):
    customer.orders.extend(Order(total_cents=c) for c in (10, 20, 30))
    db_session.commit()
    db_session.expire_all()
    loaded = db_session.scalars(
        sa.select(Customer).options(selectinload(Customer.orders)).where(Customer.id == customer.id)
    ).one()
    assert sorted(o.total_cents for o in loaded.orders) == [10, 20, 30]


def test_integrity_error_rolls_back_to_the_savepoint(db_session, customer):
    db_session.add(Customer(email="fixture@example.com", name="dupe"))
    with pytest.raises(sa.exc.IntegrityError):
        db_session.commit()
    db_session.rollback()
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Customer)) >= 1


def test_check_constraint_violation(db_session, customer):
    db_session.add(Order(customer=customer, total_cents=-1))
    with pytest.raises(sa.exc.IntegrityError):
        db_session.flush()
    db_session.rollback()


def test_explicit_begin_nested(db_session, customer):
    with db_session.begin_nested():
        db_session.add(Order(customer=customer, total_cents=5))
    nested = db_session.begin_nested()
    db_session.add(Order(customer=customer, total_cents=7))
    db_session.flush()
    nested.rollback()
    assert [
        o.total_cents
        for o in db_session.scalars(sa.select(Order).where(Order.customer_id == customer.id))
    ] == [5]


def test_raw_sql_in_the_outer_transaction(connection):
    connection.execute(sa.text("INSERT INTO events (kind) VALUES ('raw')"))
    assert (
        connection.execute(sa.text("SELECT count(*) FROM events WHERE kind = 'raw'")).scalar() >= 1
    )


def test_statement_error_inside_a_savepoint(connection):
    savepoint = connection.begin_nested()
    with pytest.raises(sa.exc.DataError):
        connection.execute(sa.text("SELECT 1 / 0"))
    savepoint.rollback()
    assert connection.execute(sa.text("SELECT 2")).scalar() == 2


def test_bulk_insert_and_update(db_session):
    db_session.execute(
        sa.insert(Customer), [{"email": f"bulk{i}@example.com", "name": f"n{i}"} for i in range(50)]
    )
    db_session.execute(
        sa.update(Customer).where(Customer.email.like("bulk%")).values(name="renamed")
    )
    assert db_session.scalar(sa.select(sa.func.count()).where(Customer.name == "renamed")) == 50


def test_sessionmaker_commit_outside_the_recipe(SessionLocal, request):
    email = f"{request.node.name}@example.com"
    with SessionLocal.begin() as session:
        session.merge(Customer(email=email, name="committed"))
    with SessionLocal() as session:
        c = session.scalar(sa.select(Customer).where(Customer.email == email))
        session.delete(c)
        session.commit()


def test_session_error_outside_the_recipe_rolls_back(SessionLocal):
    with SessionLocal() as session:
        with pytest.raises(sa.exc.ProgrammingError):
            session.execute(sa.text("SELECT * FROM no_such_table"))
        session.rollback()
        assert session.execute(sa.text("SELECT 1")).scalar() == 1


def test_select_for_update_skip_locked(SessionLocal):
    with SessionLocal() as session, session.begin():
        session.execute(sa.select(Customer).with_for_update(skip_locked=True).limit(1)).all()


@pytest.mark.parametrize(
    ("name", "total"),
    [
        (f"p{i}", cents)
        for i, cents in enumerate([0, 1, 99, 100, 12345, 10**6, 42, 7, 500, 2500] * 3)
    ],
)
def test_parametrized_orders(db_session, name, total):
    c = Customer(email=f"{name}-{total}@example.com", name=name, orders=[Order(total_cents=total)])
    db_session.add(c)
    db_session.commit()
    assert (
        db_session.scalar(
            sa.select(sa.func.sum(Order.total_cents)).where(Order.customer_id == c.id)
        )
        == total
    )


class TestQueries:
    @pytest.fixture(autouse=True)
    def seed(self, db_session):
        db_session.add_all(
            Customer(email=f"q{i}@example.com", name="Q", orders=[Order(total_cents=i * 10)])
            for i in range(10)
        )
        db_session.flush()

    def test_aggregate(self, db_session):
        assert (
            db_session.scalar(
                sa.select(sa.func.count()).select_from(Customer).where(Customer.email.like("q%"))
            )
            == 10
        )

    def test_join(self, db_session):
        rows = db_session.execute(
            sa.select(Customer.email, Order.total_cents)
            .join(Order)
            .where(Order.total_cents > 50, Customer.email.like("q%"))
        ).all()
        assert len(rows) == 4

    def test_window_function(self, db_session):
        rank = sa.func.rank().over(order_by=Order.total_cents.desc())
        top = db_session.execute(sa.select(Order.total_cents, rank).order_by(rank).limit(1)).one()
        assert top[1] == 1

    def test_streaming_results(self, db_session):
        result = db_session.execute(
            sa.select(Customer.email)
            .execution_options(yield_per=3)
            .where(Customer.email.like("q%"))
        )
        assert sum(1 for _ in result.scalars()) == 10
