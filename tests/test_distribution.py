"""The published wheel: the plugin and nothing else of this repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """``pip wheel . --no-deps``, built the way a user's pip builds it (isolated), from
    a copy of the checkout: pip builds in the source tree and would leave build/ behind."""
    source = tmp_path_factory.mktemp("source") / "pytest-dbleak"
    ignored = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".tox", "*cache")
    shutil.copytree(ROOT, source, ignore=ignored)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 and "No matching distribution found for setuptools" in result.stderr:
        pytest.skip("pip cannot fetch the build backend (setuptools>=77) from a package index")
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("pytest_dbleak-*.whl")
    return zipfile.ZipFile(path)


def metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    message = Parser().parsestr(wheel.read(name).decode())
    return {key: message.get_all(key) or [] for key in set(message.keys())}


def test_the_only_top_level_package_is_pytest_dbleak(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"pytest_dbleak"}
    assert not [name for name in wheel.namelist() if "/tests/" in name or "reference_app" in name]


def test_the_metadata_has_a_license_python_versions_and_only_user_extras(
    wheel: zipfile.ZipFile,
) -> None:
    meta = metadata(wheel)
    assert meta["License-Expression"] == ["MIT"]
    assert any(name.endswith("licenses/LICENSE") for name in wheel.namelist())
    versions = {
        c for c in meta["Classifier"] if c.startswith("Programming Language :: Python :: 3.")
    }
    assert versions == {f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)}
    assert meta["Requires-Python"] == [">=3.10"]
    assert set(meta["Provides-Extra"]) == {
        "docker",
        "stress",
        "async",
        "mysqlclient",
        "mysql-connector",
        "mariadb",
        "drivers",
        "django",
        "postgresql",
    }
    assert [ep for ep in wheel.namelist() if ep.endswith("entry_points.txt")]
