"""python -m testrigs.gpucheck [--mode gpu|cpu] [--work DIR] [--out DIR] s1 s2 s3 s4

Runs the named scenarios, writes result-<scenario>.json into --out, and prints the table
of every result found there (so results of earlier calls on the same machine are kept).
`--table-only` prints the table and writes table.md / results.json without running.
Exit 0 when every check of every scenario in --out passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testrigs.gpucheck.common import REPO, Env, Run, ScenarioFailed

SCENARIOS = ("s1", "s2", "s3", "s4")


def _commit() -> str:
    marker = REPO / ".gpu-commit"  # a tree unpacked from `git archive` (pack.sh): no .git
    if marker.exists():
        return " ".join(marker.read_text().split())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
        if out:
            return out
    return "unknown"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | check | result | detail |", "|---|---|---|---|"]
    for r in results:
        for c in r["checks"]:
            detail = c["detail"].replace("|", "/").replace("\n", " ")[:160]
            lines.append(f"| {r['scenario']} | {c['name']} | {'ok' if c['ok'] else 'FAIL'} "
                         f"| {detail} |")
        if r["error"]:
            lines.append(f"| {r['scenario']} | (stopped) | FAIL | {r['error'][:200]} |")
    lines += ["", "| scenario | timing | seconds | detail |", "|---|---|---|---|"]
    for r in results:
        for t in r["timings"]:
            lines.append(f"| {r['scenario']} | {t['name']} | {t['seconds']:.2f} | {t['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testrigs.gpucheck")
    p.add_argument("--mode", choices=["gpu", "cpu", "fake"], default="gpu")
    p.add_argument("--work", default="/tmp/gc", help="short: Ray's socket paths live below it")
    p.add_argument("--out", default="/tmp/gc-results")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("scenarios", nargs="*", help=" ".join(SCENARIOS))
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {' '.join(SCENARIOS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        env = Env.detect(args.mode, Path(args.work))
        from reconciler.demo.tinymodel import make_tiny_model

        model = env.work / "models" / "tiny-llama"
        if not (model / "config.json").exists():
            make_tiny_model(model)
        runs = {s: Run(s, out) for s in args.scenarios}
        print(f"gpu check: mode {env.mode}, {env.gpus} GPU(s) {env.gpu_name}, commit "
              f"{_commit()}, scenarios {' '.join(args.scenarios)}", flush=True)
        from testrigs.gpucheck.single import scenario_one_gpu, scenario_two_gpus

        for name, fn in (("s1", scenario_one_gpu), ("s2", scenario_two_gpus)):
            if name in runs:
                try:
                    fn(env, runs[name], model)
                except ScenarioFailed as exc:
                    runs[name].error = str(exc)
                except Exception as exc:  # the table must still come out
                    runs[name].error = f"{type(exc).__name__}: {exc}"
                runs[name].save()
        if "s3" in runs or "s4" in runs:
            from testrigs.gpucheck.multi import run_multi

            multi = {k: v for k, v in runs.items() if k in ("s3", "s4")}
            try:
                run_multi(env, multi, model)
            except Exception as exc:
                for r in multi.values():
                    r.error = r.error or f"{type(exc).__name__}: {exc}"
            for r in multi.values():
                r.save()
    results = [json.loads(f.read_text()) for f in sorted(out.glob("result-s*.json"))]
    text = table(results)
    meta = {"commit": _commit(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mode": args.mode}
    (out / "results.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    (out / "table.md").write_text(f"commit {meta['commit']}, {meta['written']}\n\n{text}\n")
    (out / "evidence.txt").write_text("\n".join(e for r in results for e in r["evidence"]))
    print(text)
    failed = [c for r in results for c in r["checks"] if not c["ok"]] + [
        r for r in results if r["error"]]
    print(f"\n{'PASS' if not failed else f'FAIL ({len(failed)})'}", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
