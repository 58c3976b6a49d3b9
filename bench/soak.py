"""Soak: run a clean corpus under ``pytest --dbleak`` many times, serially and with
``-n 2``, and report every false positive (the goal is zero).

    python bench/soak.py [--runs 10] [--family mysql|postgresql] [--corpus DIR]

``--family`` picks the default corpus: ``mysql`` (the default) runs ``soak_corpus/``,
``postgresql`` runs ``soak_corpus_pg/`` (its tests request ``dbleak_postgresql_*``, so
the session checks a private ``postgres``). ``--corpus`` runs any other directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPORA = {"mysql": HERE / "soak_corpus", "postgresql": HERE / "soak_corpus_pg"}


def run_once(corpus: Path, extra: list[str], report: Path) -> tuple[int, list[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--dbleak",
            f"--dbleak-report={report}",
            "-W",
            "error::ResourceWarning",
            *extra,
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=corpus,
    )
    elapsed = time.monotonic() - started
    false_positives: list[str] = []
    if report.exists():
        data = json.loads(report.read_text())
        false_positives = [
            f"{t['nodeid']}: "
            + "; ".join(f"{leak['count']} {leak['kind']} ({leak['what']})" for leak in t["leaks"])
            for t in data["tests"]
            if t["leaks"]
        ]
    if done.returncode not in (0,) and not false_positives:
        false_positives = [f"run failed with exit {done.returncode}: {done.stdout[-400:]}"]
    return done.returncode, false_positives, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--family",
        choices=sorted(CORPORA),
        default="mysql",
        help="the corpus to run when --corpus is not given (default: mysql)",
    )
    parser.add_argument("--corpus", type=Path, default=None, help="a directory of clean tests")
    args = parser.parse_args()
    if args.corpus is None:
        args.corpus = CORPORA[args.family]
    rows = []
    total_fp = 0
    with tempfile.TemporaryDirectory() as tmp:
        for mode, extra in (("serial", []), ("-n 2", ["-n", "2"])):
            for i in range(args.runs):
                report = Path(tmp) / f"{mode.replace(' ', '')}-{i}.json"
                code, fps, elapsed = run_once(args.corpus.resolve(), extra, report)
                total_fp += len(fps)
                rows.append((mode, i + 1, code, len(fps), elapsed, fps))
                print(
                    f"{mode:7} run {i + 1:2}: exit {code}, {len(fps)} false positives, "
                    f"{elapsed:.1f} s",
                    flush=True,
                )
    print()
    print("| mode | runs | false positives | median wall (s) |")
    print("| --- | --- | --- | --- |")
    for mode in ("serial", "-n 2"):
        mine = [r for r in rows if r[0] == mode]
        walls = sorted(r[4] for r in mine)
        found = sum(r[3] for r in mine)
        print(f"| {mode} | {len(mine)} | {found} | {walls[len(walls) // 2]:.1f} |")
    for mode, i, _code, _n, _t, fps in rows:
        for fp in fps:
            print(f"FALSE POSITIVE ({mode} run {i}): {fp}")
    print(f"\n{total_fp} false positives in {len(rows)} runs")
    return 1 if total_fp else 0


if __name__ == "__main__":
    sys.exit(main())
