import pytest
import sqlalchemy as sa

flask = pytest.importorskip("flask")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")


@pytest.fixture
def app(dbleak_mysql_url):
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = dbleak_mysql_url
    db = flask_sqlalchemy.SQLAlchemy(app)

    @app.get("/n")
    def n():
        return {"n": db.session.execute(sa.text("SELECT 1")).scalar()}

    yield app
    with app.app_context():
        db.engine.dispose()


def test_requests_through_the_test_client(app):
    client = app.test_client()
    for _ in range(5):
        assert client.get("/n").json == {"n": 1}
