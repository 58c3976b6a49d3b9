"""Extensions, created unbound; ``create_app`` attaches them with ``init_app``."""

from __future__ import annotations

from flask_socketio import SocketIO
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

# Flask-SocketIO keeps one server per SocketIO object: one application per
# process can serve Socket.IO at a time (init_app replaces the server).
socketio = SocketIO()
