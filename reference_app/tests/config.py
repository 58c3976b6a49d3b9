"""The tests' configuration: the app's defaults, a fixed key and a cheap password hash.

Kept with the tests, not in reference_app/config.py, so that no environment variable can
select it for a real deployment. Child processes the tests start (real commands) get the
same through the environment: see ``child_environment()``.
"""

from __future__ import annotations

from typing import Any

from reference_app.config import Config


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "testing-secret-key"
    # scrypt costs ~140 ms per hash and the tests create many users; the method is
    # stored in each hash, so verification works either way.
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"


def testing_settings() -> dict[str, Any]:
    """TestingConfig as the settings dict create_app() takes."""
    return {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}


def child_environment() -> dict[str, str]:
    """What a child process running a real command needs to behave as TestingConfig."""
    return {
        "REFERENCE_APP_CONFIG": "development",
        "SECRET_KEY": TestingConfig.SECRET_KEY,
        "PASSWORD_HASH_METHOD": TestingConfig.PASSWORD_HASH_METHOD,
    }
