"""Whatever lands in a .yaml file, `load_directory` answers with located problems, never a crash.

Each example is written next to a small valid repo, so the rest of the loader (schema,
cross-checks) runs too; it either loads or raises InvalidDesiredState, nothing else.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.errors import InvalidDesiredState
from reconciler.desired.loader import load_directory
from reconciler.desired.state import DesiredState

CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata:
  name: fuzz
spec:
  nodes:
    - name: gpu-0
      address: 10.0.0.1
      labels: {gpu: a800}
      gpus: {count: 8, memoryGib: 80}
    - name: cpu-0
      address: 10.0.0.2
      gpus: {count: 0, memoryGib: 1}
"""

CHAT_SPEC: dict[str, Any] = {
    "model": {"path": "/models/chat", "servedName": "chat"},
    "replicas": 1,
    "parallelism": {"tensor": 2},
    "executor": "ray",
    "placement": {"nodes": ["gpu-0"]},
    "engine": {"maxModelLen": 4096, "extraArgs": ["--trust-remote-code"], "env": {"A": "1"}},
    "port": 8000,
    "probes": {"periodSeconds": 5},
    "rollout": {"strategy": "RollingUpdate", "maxUnavailable": 1},
}

LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def repo() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="loader-fuzz-"))
    (root / "cluster.yaml").write_text(CLUSTER)
    yield root
    shutil.rmtree(root)


def _load(root: Path, fuzz_file: Path) -> DesiredState | None:
    try:
        return load_directory(root)
    except InvalidDesiredState as exc:
        assert exc.problems, "InvalidDesiredState without problems"
        assert exc.problems == sorted(exc.problems)
        # YAML 1.1 also breaks lines at \r, NEL, LS and PS
        text = fuzz_file.read_bytes().decode("utf-8", errors="replace")
        n_lines = len(LINE_BREAK.findall(text)) + 1
        for p in exc.problems:
            assert p.file, p
            assert p.line >= 1, p
            assert p.column >= 1, p
            assert p.message.strip(), p
            if p.file == str(fuzz_file):
                assert p.line <= n_lines, p
        return None


YAML_BITS = [
    "a",
    "spec",
    "kind",
    ":",
    ": ",
    " ",
    "  ",
    "\n",
    "\t",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&x ",
    "*x",
    "!!int ",
    "!!float ",
    "!!binary ",
    "!!timestamp ",
    "!!python/name:os.system ",
    "!custom ",
    "<<: ",
    "? ",
    "'",
    '"',
    "\\",
    "# c",
    "---\n",
    "...\n",
    "2024-13-45",
    "1e9",
    "0x1F",
    "null",
    "~",
    "yes",
    "|\n",
    ">-\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "apiVersion: reconciler.dev/v1alpha1\n",
    "kind: Cluster\n",
    "kind: ModelDeployment\n",
    "metadata: {name: x}\n",
    "\x85",
    "\ufeff",
    "\u2028",
    "\x01",
    "é",
]

yaml_like_text = st.lists(st.sampled_from(YAML_BITS), max_size=40).map("".join)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), yaml_like_text))
def test_arbitrary_text(repo: Path, text: str) -> None:
    target = repo / "fuzz.yaml"
    target.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load(repo, target)


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(repo: Path, data: bytes) -> None:
    target = repo / "fuzz.yaml"
    target.write_bytes(data)
    _load(repo, target)


def test_pathological_yaml(repo: Path) -> None:
    """Shapes that exhaust stacks or memory in naive loaders."""
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    for text in [
        "[" * 10000,
        "{a: " * 5000,
        "- " * 3000 + "x\n",
        "a: &a [*a]\n",
        "a: &a {b: &b {c: [*a, *b]}}\n",
        laughs,
        "a: " + "x" * 1_000_000 + "\n",
    ]:
        target = repo / "fuzz.yaml"
        target.write_text(text)
        assert _load(repo, target) is None


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["ray", "mp", "gpu-0", "cpu-0", "/models/x", "a800", "Recreate", "-tp"]),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.sampled_from(sorted(CHAT_SPEC))),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def _replace(tree: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = dict(tree)
    if len(path) == 1 or not isinstance(out.get(path[0]), dict):
        out[path[0]] = value
    else:
        out[path[0]] = _replace(out[path[0]], path[1:], value)
    return out


SPEC_PATHS = [
    [key, *([sub] if sub else [])]
    for key, value in CHAT_SPEC.items()
    for sub in ([None, *value] if isinstance(value, dict) else [None])
]


@FUZZ
@given(
    kind=st.sampled_from(["ModelDeployment", "Cluster", "Other"]),
    spec=trees,
    where=st.sampled_from(SPEC_PATHS),
    whole=st.booleans(),
)
def test_arbitrary_trees_under_envelope(
    repo: Path, kind: str, spec: Any, where: list[str], whole: bool
) -> None:
    # whole=False: one field of a valid spec replaced, which reaches the cross-checks
    body = spec if whole or kind != "ModelDeployment" else _replace(CHAT_SPEC, where, spec)
    document = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fuzzed"},
        "spec": body,
    }
    target = repo / "fuzz.yaml"
    target.write_text(yaml.safe_dump(document, allow_unicode=True))
    _load(repo, target)


def test_valid_base_loads(repo: Path) -> None:
    target = repo / "fuzz.yaml"
    document = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat"},
        "spec": CHAT_SPEC,
    }
    target.write_text(yaml.safe_dump(document))
    state = _load(repo, target)
    assert state is not None
    assert list(state.deployments) == ["chat"]
