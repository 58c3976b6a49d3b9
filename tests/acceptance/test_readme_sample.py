"""README's sample failure is real: its module is run and the output compared.

The README's "Reading a failure" section has the module (a ```python block) and what
`pytest --dbleak` prints for it (the next ``` block, `...` marking lines left out). This
test runs the module and checks every shown line against the real output, up to what
changes from run to run: connection ids, ports, session user names, times, the server's
version, and the width of the terminal.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.acceptance.helpers import ONLY_DBLEAK

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Reading a failure"

_SEPARATOR = re.compile(r"^(?P<ch>[=_-])(?P=ch){2,}(?: (?P<title>.*?) (?P=ch){2,})?$")
_VARYING = (
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"dbleak_\w+?_[0-9a-f]{6}\b"), "SESSION_USER"),
    (re.compile(r"server connection \d+"), "server connection ID"),
    (re.compile(r"re-checked for \d+\.\d+ s"), "re-checked for T s"),
    (re.compile(r", server \S+ at "), ", server VERSION at "),
    (re.compile(r"^  \d+ "), "  ID "),  # a processlist row: its id ...
    (re.compile(r" (Sleep|Query) \d+\b"), r" \1 T"),  # ... and its time
)


def normalised(line: str) -> str:
    line = line.rstrip()
    sep = _SEPARATOR.match(line)
    if sep:
        ch = sep["ch"] * 3
        return f"{ch} {sep['title']} {ch}" if sep["title"] else ch
    indent = len(line) - len(line.lstrip(" "))
    line = " " * min(indent, 4) + re.sub(r" {2,}", " ", line.lstrip(" "))
    for pattern, replacement in _VARYING:
        line = pattern.sub(replacement, line)
    return line


def readme_sample() -> tuple[str, list[str], list[list[str]]]:
    """The module's source, the command's arguments, and the shown output in segments
    (each segment's lines follow one another in the real output)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    (lang, source), (_, output) = blocks[:2]
    assert lang == "python"
    command, *shown = output.splitlines()
    assert command.startswith("$ pytest "), command
    segments: list[list[str]] = [[]]
    for line in shown:
        if line == "...":
            segments.append([])
        else:
            segments[-1].append(line)
    return source, shlex.split(command[2:])[1:], [s for s in segments if s]


def test_the_readme_sample_failure_is_what_a_real_run_prints(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On CI (CI or BUILD_NUMBER set) pytest does not shorten the short summary's lines;
    # the sample shows a terminal's.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    source, args, segments = readme_sample()
    target = pytester.path / "tests" / "test_orders.py"
    target.parent.mkdir()
    target.write_text(source)

    # The default settle time, as in the sample; the process backend, which "auto" picks
    # on a machine without Docker.
    result = pytester.runpytest_subprocess(
        *args, "--dbleak-backend=process", *ONLY_DBLEAK, "--dbleak-report=dbleak.json"
    )

    real = [normalised(line) for line in result.stdout.lines]
    at = 0
    for segment in segments:
        want = [normalised(line) for line in segment]
        found = next(
            (i for i in range(at, len(real) - len(want) + 1) if real[i : i + len(want)] == want),
            None,
        )
        assert found is not None, (
            "README's sample does not match the real output; expected, in order:\n"
            + "\n".join(want)
            + "\n\nreal output (normalised):\n"
            + "\n".join(real)
        )
        at = found + len(want)
    assert result.ret == 6  # the only failure is the leak

    # The JSON sample: the same fields, and the same values where a run does not vary.
    sample = json.loads(
        re.search(
            r"^  ```json\n(.*?)^  ```$",
            README.read_text(encoding="utf-8"),
            re.MULTILINE | re.DOTALL,
        )[1]
    )
    same_shape(sample, json.loads((pytester.path / "dbleak.json").read_text()), "report")


# Values that vary from run to run; every other value of the sample must be the real one.
_VARYING_FIELDS = {
    "port",
    "version",
    "what",
    "connection_ids",
    "id",
    "user",
    "host",
    "db",
    "time",
    "waited",
    "started",
    "duration",
}


def same_shape(sample: object, real: object, where: str) -> None:
    """`sample` (README's) has the fields of `real`, with its values where they are stable;
    "…" in the sample stands for anything (a list item it leaves out)."""
    if sample == "…":
        return
    if isinstance(sample, dict):
        assert isinstance(real, dict), where
        assert sorted(sample) == sorted(real), f"{where}: fields {sorted(sample)} vs {sorted(real)}"
        for key, value in sample.items():
            if key not in _VARYING_FIELDS:
                same_shape(value, real[key], f"{where}.{key}")
    elif isinstance(sample, list):
        assert isinstance(real, list), where
        # A "…" item stands for one item.
        assert len(sample) == len(real), f"{where}: {len(sample)} items vs {len(real)}"
        for i, value in enumerate(sample):
            same_shape(value, real[i], f"{where}[{i}]")
    else:
        assert sample == real, f"{where}: {sample!r} vs {real!r}"


def test_the_normalisation_keeps_what_matters() -> None:
    # Ids and widths go; kinds, counts, lines and functions stay.
    assert (
        normalised("  6   dbleak_main_37f9b3  127.0.0.1:56536  dbleak_main_37f9b3  Sleep    1")
        == "  ID SESSION_USER 127.0.0.1:PORT SESSION_USER Sleep T"
    )
    assert normalised("_____ test_checkout ______") == "___ test_checkout ___"
    assert normalised(
        "dbleak: 1 connection leaked (1 checked_out) at tests/test_orders.py:15"
    ) != normalised("dbleak: 2 connections leaked (2 checked_out) at tests/test_orders.py:15")
    assert normalised("    tests/test_orders.py:26 in test_checkout") != normalised(
        "    tests/test_orders.py:27 in test_checkout"
    )
