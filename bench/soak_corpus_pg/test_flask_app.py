"""An application-factory Flask app, as a Flask-SQLAlchemy-style project builds it: one
engine per app (the session's), a ``scoped_session`` per request/app context removed at
teardown, and a per-test scoped session fixture that the test's teardown removes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker

from conftest import Customer, Order

flask = pytest.importorskip("flask")


def create_app(config: dict) -> flask.Flask:
    app = flask.Flask("shop")
    app.config.update(config)
    engine = sa.create_engine(app.config["DATABASE_URL"], pool_size=3, max_overflow=5)
    db_session = scoped_session(sessionmaker(bind=engine))
    app.extensions["engine"] = engine
    app.extensions["db_session"] = db_session

    @app.teardown_appcontext
    def remove_session(exc=None):
        db_session.remove()

    @app.post("/customers")
    def create_customer():
        body = flask.request.get_json()
        customer = Customer(email=body["email"], name=body["name"])
        db_session.add(customer)
        try:
            db_session.commit()
        except sa.exc.IntegrityError:
            db_session.rollback()
            return {"error": "email taken"}, 409
        return {"id": customer.id}, 201

    @app.get("/customers/<int:customer_id>")
    def get_customer(customer_id: int):
        customer = db_session.get(Customer, customer_id)
        if customer is None:
            flask.abort(404)
        return {"id": customer.id, "email": customer.email, "orders": len(customer.orders)}

    @app.post("/customers/<int:customer_id>/orders")
    def place_order(customer_id: int):
        order = Order(customer_id=customer_id, total_cents=flask.request.get_json()["total"])
        db_session.add(order)
        db_session.commit()
        return {"id": order.id}, 201

    @app.get("/health")
    def health():
        return {"db": db_session.execute(sa.text("SELECT 1")).scalar_one()}

    return app


@pytest.fixture(scope="session")
def app(database_url, engine):  # `engine` has created the tables
    app = create_app({"DATABASE_URL": database_url, "TESTING": True})
    yield app
    app.extensions["db_session"].remove()
    app.extensions["engine"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    """The app's scoped session for the test's own setup and assertions."""
    session = app.extensions["db_session"]
    yield session
    session.remove()


def test_health(client):
    assert client.get("/health").json == {"db": 1}


def test_create_and_fetch_customer(client, request):
    email = f"{request.node.name}@example.com"
    created = client.post("/customers", json={"email": email, "name": "Ada"})
    assert created.status_code == 201
    got = client.get(f"/customers/{created.json['id']}")
    assert got.json["email"] == email


def test_duplicate_email_is_a_conflict(client, request):
    email = f"{request.node.name}@example.com"
    assert client.post("/customers", json={"email": email, "name": "A"}).status_code == 201
    assert client.post("/customers", json={"email": email, "name": "B"}).status_code == 409


def test_missing_customer_is_404(client):
    assert client.get("/customers/999999999").status_code == 404


def test_orders_are_counted(client, db, request):
    customer = Customer(email=f"{request.node.name}@example.com", name="Grace")
    db.add(customer)
    db.commit()
    customer_id = customer.id  # each request's teardown removes the scoped session
    for total in (100, 250, 999):
        assert (
            client.post(f"/customers/{customer_id}/orders", json={"total": total}).status_code
            == 201
        )
    assert client.get(f"/customers/{customer_id}").json["orders"] == 3


def test_fixture_session_sees_app_writes(client, db, request):
    email = f"{request.node.name}@example.com"
    client.post("/customers", json={"email": email, "name": "Linus"})
    assert db.scalar(sa.select(Customer.name).where(Customer.email == email)) == "Linus"


@pytest.mark.parametrize("n", range(15))
def test_many_requests(client, n):
    for _ in range(3):
        assert client.get("/health").status_code == 200


def test_app_per_test_disposes_its_engine(database_url, engine):
    app = create_app({"DATABASE_URL": database_url})
    try:
        assert app.test_client().get("/health").json == {"db": 1}
    finally:
        app.extensions["db_session"].remove()
        app.extensions["engine"].dispose()


def test_flask_sqlalchemy_extension(database_url):
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    app = flask.Flask("ext")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = flask_sqlalchemy.SQLAlchemy(app)

    @app.get("/now")
    def now():
        return {"ok": db.session.execute(sa.text("SELECT now() IS NOT NULL")).scalar()}

    client = app.test_client()
    try:
        for _ in range(3):
            assert client.get("/now").json == {"ok": True}
    finally:
        with app.app_context():
            db.engine.dispose()
