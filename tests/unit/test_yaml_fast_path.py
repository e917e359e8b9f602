"""The libyaml path of `read_documents` answers exactly what the pure-Python path answers:
the same data, the same field positions, the same problems at the same file:line:col.

Differential: each input is read twice, once as shipped (libyaml when PyYAML has it) and
once with libyaml switched off, and the two answers must be equal. Plus absolute checks
of positions against the text of a large generated repo.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import yaml_positions
from reconciler.desired.yaml_positions import read_documents
from testrigs.big_repo import write_repo

pytestmark = pytest.mark.skipif(
    not getattr(yaml, "__with_libyaml__", False),
    reason="PyYAML without libyaml: there is only the pure-Python path to test",
)

FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def _answer(file: Path) -> tuple[list[tuple[int, Any, dict[Any, Any], set[Any]]], list[Any]]:
    docs, problems = read_documents(file)
    return [(d.index, d.data, d.positions, d.unreadable) for d in docs], problems


def _both(file: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = _answer(file)
    with monkeypatch.context() as m:
        m.setattr(yaml_positions, "_CLoader", None)
        pure = _answer(file)
    return fast, pure


def test_the_fast_path_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the rest of this file against comparing the pure path with itself."""
    calls: list[str] = []
    real = yaml_positions._compose_fast

    def spy(text: str) -> Any:
        out = real(text)
        calls.append("fast" if out is not None else "fallback")
        return out

    monkeypatch.setattr(yaml_positions, "_compose_fast", spy)
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "b.yaml").write_text("a: [1\n")
    read_documents(tmp_path / "a.yaml")
    read_documents(tmp_path / "b.yaml")
    assert calls == ["fast", "fallback"]


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("big-repo")
    write_repo(root, nodes=300, deployments=600, files=6)
    yield root


def test_large_repo_same_answer(big_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for file in sorted(big_repo.glob("*.yaml")):
        fast, pure = _both(file, monkeypatch)
        assert fast == pure, file
        assert not fast[1], fast[1][:3]


def test_large_repo_positions_point_at_the_text(big_repo: Path) -> None:
    """Every deployment's name and port, and every node's address, located exactly."""
    checked = 0
    for file in sorted(big_repo.glob("*.yaml")):
        lines = file.read_text().splitlines()
        docs, problems = read_documents(file)
        assert not problems
        for doc in docs:
            if doc.data["kind"] == "Cluster":
                for i, node in enumerate(doc.data["spec"]["nodes"]):
                    line, col = doc.positions[("spec", "nodes", i, "address")]
                    assert lines[line - 1][col - 1 :] == f"address: {node['address']}"
                    line, col = doc.positions[("spec", "nodes", i)]
                    assert lines[line - 1][col - 1 :] == f"name: {node['name']}"
                    checked += 1
                continue
            line, col = doc.positions[("metadata", "name")]
            assert lines[line - 1][col - 1 :] == f"name: {doc.data['metadata']['name']}"
            line, col = doc.positions[("spec", "port")]
            assert lines[line - 1][col - 1 :] == f"port: {doc.data['spec']['port']}"
            checked += 1
    assert checked == 900


def test_errors_deep_in_a_large_file_keep_their_place(
    big_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (big_repo / "deployments-003.yaml").read_text()
    lines = text.splitlines(keepends=True)
    broken = tmp_path / "broken.yaml"
    target = next(i for i, ln in enumerate(lines) if ln.strip() == "name: d350")
    for bad in ("  name: [d350\n", "\tname: d350\n", "  name: d350\n  name: again\n",
                "  name: \x07\n", "  name: !!int abc\n"):
        broken.write_text("".join([*lines[:target], bad, *lines[target + 1 :]]))
        fast, pure = _both(broken, monkeypatch)
        assert fast == pure, bad
        assert fast[1], bad
        assert any(p.line >= target + 1 for p in fast[1]), (bad, fast[1])


# The fuzz alphabet of tests/unit/test_loader_fuzz.py, plus line breaks and non-ASCII that
# move columns: where libyaml and PyYAML might count differently.
BITS = [
    "a", "spec", "kind", ":", ": ", " ", "  ", "\n", "\r\n", "\r", "\t", "- ", "[", "]", "{",
    "}", ",", "&x ", "*x", "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!!str ",
    "!!python/name:os.system ", "!custom ", "<<: ", "? ", "'", '"', "\\", "# c", "---\n",
    "...\n", "2024-13-45", "2024-01-02", "1e9", "0x1F", "0o17", "1_000", "null", "~", "yes",
    "|\n", ">-\n", "%YAML 1.1\n", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "\x85", "\ufeff",
    "\u2028", "\u2029", "\x01", "é", "日本", "\U0001f600", "a: b\n", "- x\n", "  k: v\n",
    "\\x41", "\\u00e9", "\\N", "=", ".inf", ".NaN", "+12", "-0", "0.", "1:30",
]
yaml_like = st.lists(st.sampled_from(BITS), max_size=50).map("".join)


@FUZZ
@given(text=st.one_of(yaml_like, st.text(max_size=200)))
def test_fuzz_same_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    file = tmp_path / "fuzz.yaml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    fast, pure = _both(file, monkeypatch)
    assert _plain(fast) == _plain(pure)


def _plain(answer: Any) -> Any:
    """NaN != NaN: compare its spelling instead."""
    return re.sub(r"\bnan\b", "NaN", repr(answer))
