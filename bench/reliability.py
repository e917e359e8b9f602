"""Run the reliability and security suites and print what they measured.

    .venv/bin/python bench/reliability.py [--out DIR] [pytest args...]

Runs pytest on tests/system/test_reliability.py, tests/system/test_security.py and
tests/integration/test_reliability_clock.py with a junit report; every test records its
findings (faults injected, bad inputs tried, audits of engines lost / orphans /
duplicates, measurements) into a JSON-lines file through the `findings` fixture. The
table is built from those two files only. Exit status: pytest's, or 1 if any engine was
lost, orphaned or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITES = [
    "tests/system/test_reliability.py",
    "tests/system/test_security.py",
    "tests/integration/test_reliability_clock.py",
]


def junit_outcomes(path: Path) -> dict[str, str]:
    """nodeid-ish key ('file::name') -> passed / failed / error / skipped."""
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cls = case.get("classname", "")
        name = case.get("name", "")
        file = cls.replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        out[f"{file}::{name}"] = outcome
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep reports here")
    args, pytest_args = parser.parse_known_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="reliability-"))
    out.mkdir(parents=True, exist_ok=True)
    results = out / "findings.jsonl"
    junit = out / "junit.xml"
    results.unlink(missing_ok=True)
    env = dict(os.environ, RECONCILER_RELIABILITY_RESULTS=str(results))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
           f"--junitxml={junit}", *SUITES, *pytest_args]
    rc = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    outcomes = junit_outcomes(junit) if junit.exists() else {}
    records: list[dict[str, Any]] = []
    if results.exists():
        records = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]
    rows = []
    for r in records:
        outcome = outcomes.get(r["test"], "unknown")
        rows.append((r["scenario"] or r["test"].split("::")[-1], outcome, r["faults"],
                     r["bad_inputs"], r["engines_lost"], r["orphans"], r["duplicates"],
                     r["audits"]))
    totals = {
        "scenarios run": len(outcomes),
        "passed": sum(o == "passed" for o in outcomes.values()),
        "failed": sum(o in ("failed", "error") for o in outcomes.values()),
        "skipped": sum(o == "skipped" for o in outcomes.values()),
        "faults survived": sum(r[2] for r in rows if r[1] == "passed"),
        "bad inputs tried": sum(r[3] for r in rows),
        "audits of running engines": sum(r[7] for r in rows),
        "engines lost": sum(r[4] for r in rows),
        "orphans": sum(r[5] for r in rows),
        "duplicates": sum(r[6] for r in rows),
    }
    head = ("scenario", "result", "faults", "bad inputs", "lost", "orphans", "dups")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = row[:7]
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
              + " |")
    print()
    for k, v in totals.items():
        print(f"{k:>26}: {v}")
    print(f"\nreports: {junit} {results}")
    measured = {r["scenario"]: r["measured"] for r in records if r["measured"]}
    (out / "measured.json").write_text(json.dumps(measured, indent=1, sort_keys=True))
    if totals["engines lost"] or totals["orphans"] or totals["duplicates"]:
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
