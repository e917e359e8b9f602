"""`reconciler validate` on broken cluster repos: exit 2, every problem located exactly.

Each case starts from a small valid repo (`CLUSTER` + `CHAT`), changes one thing and
names the expected `file:line:col: field: message` of every problem it must report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.cli.main import main

CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata:
  name: test
spec:
  nodes:
    - name: gpu-0
      address: 10.0.0.1
      labels: {gpu: a800}
      gpus: {count: 8, memoryGib: 80}
    - name: gpu-1
      address: 10.0.0.2
      labels: {gpu: a800}
      gpus: {count: 8, memoryGib: 80}
"""

CHAT = """\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: chat
spec:
  model:
    path: /models/chat
    servedName: chat
  replicas: 2
  parallelism: {tensor: 4}
  port: 8000
"""

BASE: dict[str, str | bytes] = {"cluster.yaml": CLUSTER, "chat.yaml": CHAT}

ERROR_LINE = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$")


def write_repo(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """Write {relative path: text or bytes} under root; None leaves a base file out."""
    merged: dict[str, str | bytes | None] = {**BASE, **files}
    for rel, content in merged.items():
        if content is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


@dataclass(frozen=True)
class Expect:
    """One problem: `file:line:col: field: ...fragment...` (field "" for file-level ones)."""

    file: str
    line: int
    col: int
    field: str
    fragment: str

    def prefix(self, root: Path) -> str:
        where = f"{root / self.file}:{self.line}:{self.col}: "
        return where + (f"{self.field}: " if self.field else "")


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes | None]
    expect: tuple[Expect, ...]


ARCH_671B = (
    "    weightsDtype: bfloat16\n"
    "    architecture: {parameters: 671e9, numLayers: 61, numKvHeads: 8, headDim: 128}\n"
)

CASES = [
    # --- YAML syntax and file content ---
    Case(
        "tab-indentation",
        {"chat.yaml": edit(CHAT, "  replicas: 2", "\treplicas: 2")},
        (Expect("chat.yaml", 9, 1, "", "tab character: YAML indentation must use spaces"),),
    ),
    Case(
        "unclosed-flow-sequence",
        {"chat.yaml": edit(CHAT, "{tensor: 4}", "[1, 2")},
        (Expect("chat.yaml", 11, 7, "", "invalid YAML: expected ',' or ']'"),),
    ),
    Case(
        "duplicate-key",
        {"chat.yaml": CHAT + "  port: 8001\n"},
        (
            Expect(
                "chat.yaml", 12, 3, "spec.port", "duplicate key 'port' (first defined on line 11)"
            ),
        ),
    ),
    Case(
        "wrong-type",
        {"chat.yaml": edit(CHAT, "replicas: 2", 'replicas: "two"')},
        (Expect("chat.yaml", 9, 3, "spec.replicas", "Input should be a valid integer"),),
    ),
    Case(
        "unknown-field-typo",
        {"chat.yaml": edit(CHAT, "replicas: 2", "replcas: 2")},
        (Expect("chat.yaml", 9, 3, "spec.replcas", "unknown field (check the spelling"),),
    ),
    Case(
        "unknown-kind",
        {"chat.yaml": edit(CHAT, "kind: ModelDeployment", "kind: ModelDeploy")},
        (Expect("chat.yaml", 2, 1, "kind", "unknown kind 'ModelDeploy'; known: Cluster, Model"),),
    ),
    Case(
        "missing-kind",
        {"chat.yaml": edit(CHAT, "kind: ModelDeployment\n", "")},
        (Expect("chat.yaml", 1, 1, "", "missing kind"),),
    ),
    Case(
        "wrong-api-version",
        {"chat.yaml": edit(CHAT, "reconciler.dev/v1alpha1", "reconciler.dev/v1")},
        (
            Expect(
                "chat.yaml",
                1,
                1,
                "apiVersion",
                "unsupported apiVersion 'reconciler.dev/v1'; expected 'reconciler.dev/v1alpha1'",
            ),
        ),
    ),
    Case(
        "missing-api-version",
        {"chat.yaml": edit(CHAT, "apiVersion: reconciler.dev/v1alpha1\n", "")},
        (Expect("chat.yaml", 1, 1, "", "missing apiVersion"),),
    ),
    Case(
        "missing-required-port",
        {"chat.yaml": edit(CHAT, "  port: 8000\n", "")},
        (Expect("chat.yaml", 5, 1, "spec.port", "required field is missing"),),
    ),
    Case(
        "empty-file",
        {"extra.yaml": ""},
        (Expect("extra.yaml", 1, 1, "", "file is empty: no YAML documents in it"),),
    ),
    Case(
        "comments-only-file",
        {"extra.yml": "# nothing here yet\n\n   # still nothing\n"},
        (Expect("extra.yml", 1, 1, "", "file is empty"),),
    ),
    Case(
        "binary-junk-nul",
        {"extra.yaml": b"apiVersion: x\nki\x00nd: \x89PNG\n"},
        (Expect("extra.yaml", 2, 3, "", "binary content (NUL byte): not a YAML file"),),
    ),
    Case(
        "invalid-utf8",
        {"extra.yaml": b"apiVersion: x\nkind: \xff\xfe\n"},
        (Expect("extra.yaml", 2, 7, "", "not valid UTF-8 text"),),
    ),
    Case(
        "control-character",
        {"chat.yaml": CHAT + "  suspend: \x01\n"},
        (Expect("chat.yaml", 12, 12, "", "invalid YAML: character #x0001"),),
    ),
    Case(
        "top-level-list",
        {"extra.yaml": "- apiVersion: reconciler.dev/v1alpha1\n- kind: Cluster\n"},
        (Expect("extra.yaml", 1, 1, "", "a document must be a mapping, not a list"),),
    ),
    Case(
        "top-level-scalar",
        {"extra.yaml": "just some words\n"},
        (Expect("extra.yaml", 1, 1, "", "a document must be a mapping, not a str value"),),
    ),
    Case(
        "impossible-date",
        {"chat.yaml": CHAT + "  suspend: 2024-13-45\n"},
        (Expect("chat.yaml", 12, 12, "spec.suspend", "bad value '2024-13-45' for timestamp"),),
    ),
    Case(
        "recursive-alias",
        {"chat.yaml": edit(CHAT, "{tensor: 4}", "&loop {tensor: *loop}")},
        # the anchor's position: PyYAML resolves the alias to the very same node
        (Expect("chat.yaml", 10, 16, "spec.parallelism.tensor", "recursive alias"),),
    ),
    Case(
        "merge-key",
        {"chat.yaml": edit(CHAT, "{tensor: 4}", "{<<: {tensor: 4}}")},
        (Expect("chat.yaml", 10, 17, "spec.parallelism", "merge keys ('<<') are not supported"),),
    ),
    Case(
        "nested-too-deep",
        {"extra.yaml": "a: " + "[" * 150 + "]" * 150 + "\n"},
        (
            Expect("extra.yaml", 1, 1, "", "missing apiVersion"),
            Expect("extra.yaml", 1, 103, "a" + "[0]" * 99, "nested deeper than 100 levels"),
        ),
    ),
    # --- schema ---
    Case(
        "bad-name",
        {"chat.yaml": edit(CHAT, "name: chat", "name: Chat_1")},
        (Expect("chat.yaml", 4, 3, "metadata.name", "String should match pattern"),),
    ),
    Case(
        "model-path-relative",
        {"chat.yaml": edit(CHAT, "/models/chat", "models/chat")},
        (Expect("chat.yaml", 7, 5, "spec.model.path", "path 'models/chat' must be absolute"),),
    ),
    Case(
        "model-path-dotdot",
        {"chat.yaml": edit(CHAT, "/models/chat", "/models/../etc/shadow")},
        (Expect("chat.yaml", 7, 5, "spec.model.path", "must not contain '..'"),),
    ),
    Case(
        "model-path-and-hub-id",
        {"chat.yaml": edit(CHAT, "    servedName", "    hubId: org/chat\n    servedName")},
        (Expect("chat.yaml", 6, 3, "spec.model", "set exactly one of 'path' and 'hubId'"),),
    ),
    Case(
        "env-overrides-cuda-visible-devices",
        {"chat.yaml": CHAT + "  engine:\n    env:\n      CUDA_VISIBLE_DEVICES: '0,1'\n"},
        (
            Expect(
                "chat.yaml",
                14,
                7,
                "spec.engine.env.CUDA_VISIBLE_DEVICES",
                "CUDA_VISIBLE_DEVICES is set by the daemon and may not be overridden",
            ),
        ),
    ),
    Case(
        "cluster-default-env-overrides-ld-preload",
        {
            "cluster.yaml": edit(
                CLUSTER, "spec:\n", "spec:\n  engineDefaults:\n    env: {LD_PRELOAD: /x.so}\n"
            )
        },
        (
            Expect(
                "cluster.yaml",
                7,
                11,
                "spec.engineDefaults.env.LD_PRELOAD",
                "LD_PRELOAD is set by the daemon",
            ),
        ),
    ),
    Case(
        "env-bad-name",
        {"chat.yaml": CHAT + "  engine:\n    env: {'A-B': x}\n"},
        (Expect("chat.yaml", 13, 11, "spec.engine.env.A-B", "not a valid environment variable"),),
    ),
    Case(
        "extra-args-newline",
        {"chat.yaml": CHAT + '  engine:\n    extraArgs: ["--trust-remote-code\\n--x"]\n'},
        (
            Expect(
                "chat.yaml",
                13,
                17,
                "spec.engine.extraArgs[0]",
                "contains a line break or NUL",
            ),
        ),
    ),
    Case(
        "extra-args-managed-flag",
        {"chat.yaml": CHAT + '  engine:\n    extraArgs: ["--trust-remote-code", "--port=9"]\n'},
        (
            Expect(
                "chat.yaml",
                13,
                40,
                "spec.engine.extraArgs[1]",
                "--port is set from a typed field; use that field instead",
            ),
        ),
    ),
    Case(
        "placement-nodes-and-selector",
        {"chat.yaml": CHAT + "  placement:\n    nodes: [gpu-0]\n    nodeSelector: {gpu: a800}\n"},
        (Expect("chat.yaml", 12, 3, "spec.placement", "set 'nodes' or 'nodeSelector', not both"),),
    ),
    Case(
        "rollout-cannot-progress",
        {"chat.yaml": CHAT + "  rollout: {maxSurge: 0, maxUnavailable: 0}\n"},
        (Expect("chat.yaml", 12, 26, "spec.rollout.maxUnavailable", "greater than or equal to 1"),),
    ),
    Case(
        "rollout-surge-at-most-one",
        {"chat.yaml": CHAT + "  rollout: {maxSurge: 2}\n"},
        (Expect("chat.yaml", 12, 13, "spec.rollout.maxSurge", "less than or equal to 1"),),
    ),
    Case(
        "node-address-not-ip",
        {"cluster.yaml": edit(CLUSTER, "10.0.0.2", "gpu-1.example")},
        (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "'gpu-1.example' is not an IP"),),
    ),
    # --- cross-document checks ---
    Case(
        "placement-names-missing-node",
        {"chat.yaml": CHAT + "  placement:\n    nodes: [gpu-0, gpu-9]\n"},
        (
            Expect(
                "chat.yaml",
                13,
                20,
                "spec.placement.nodes[1]",
                "no node named 'gpu-9' in the Cluster (known: gpu-0, gpu-1)",
            ),
        ),
    ),
    Case(
        "node-selector-matches-nothing",
        {"chat.yaml": CHAT + "  placement:\n    nodeSelector: {gpu: h100}\n"},
        (
            Expect(
                "chat.yaml",
                13,
                5,
                "spec.placement.nodeSelector",
                "no node carries all of the labels {'gpu': 'h100'}",
            ),
        ),
    ),
    Case(
        "duplicate-deployment-name-in-two-files",
        {"sub/chat-copy.yaml": edit(CHAT, "port: 8000", "port: 8050")},
        (
            Expect(
                "sub/chat-copy.yaml",
                4,
                3,
                "metadata.name",
                "duplicate ModelDeployment name 'chat'; also at {root}/chat.yaml:4",
            ),
        ),
    ),
    Case(
        "port-outside-engine-range",
        {"chat.yaml": edit(CHAT, "port: 8000", "port: 9000")},
        (
            Expect(
                "chat.yaml",
                11,
                3,
                "spec.port",
                "ports 9000-9001 (one per replica) must lie in the cluster's engine range "
                "8000-8099",
            ),
        ),
    ),
    Case(
        "replica-ports-run-past-range",
        {"chat.yaml": edit(CHAT, "port: 8000", "port: 8099")},
        (Expect("chat.yaml", 11, 3, "spec.port", "ports 8099-8100 (one per replica)"),),
    ),
    Case(
        "clashing-ports-same-node",
        {"other.yaml": edit(edit(CHAT, "name: chat", "name: other"), "port: 8000", "port: 8001")},
        (
            Expect(
                "other.yaml",
                11,
                3,
                "spec.port",
                "port 8001 is also used by deployment 'chat' on node(s) gpu-0, gpu-1",
            ),
        ),
    ),
    Case(
        "tensor-parallel-exceeds-node-ray",
        {"chat.yaml": edit(CHAT, "{tensor: 4}", "{tensor: 16}\n  executor: ray")},
        (
            Expect(
                "chat.yaml",
                10,
                3,
                "spec.parallelism",
                "tensor parallel 16 exceeds the 8 GPUs of the largest matching node",
            ),
        ),
    ),
    Case(
        # executor mp spans nodes like ray (vLLM --nnodes) and keeps tensor parallel
        # inside a node
        "executor-mp-tensor-across-nodes",
        {"chat.yaml": edit(CHAT, "{tensor: 4}", "{tensor: 16}\n  executor: mp")},
        (
            Expect(
                "chat.yaml",
                10,
                3,
                "spec.parallelism",
                "tensor parallel 16 exceeds the 8 GPUs of the largest matching node",
            ),
        ),
    ),
    Case(
        "too-many-replicas-for-gpus",
        {"chat.yaml": edit(CHAT, "replicas: 2", "replicas: 5")},
        (
            Expect(
                "chat.yaml",
                9,
                3,
                "spec.replicas",
                "5 replica(s) x 4 GPUs do not fit the matching nodes' declared GPUs (16 in all",
            ),
        ),
    ),
    Case(
        "duplicate-node-address",
        {"cluster.yaml": edit(CLUSTER, "10.0.0.2", "10.0.0.1")},
        (
            Expect(
                "cluster.yaml",
                12,
                7,
                "spec.nodes[1].address",
                "address 10.0.0.1 is also used by nodes[0]",
            ),
        ),
    ),
    Case(
        "duplicate-node-name",
        {"cluster.yaml": edit(CLUSTER, "name: gpu-1", "name: gpu-0")},
        (Expect("cluster.yaml", 11, 7, "spec.nodes[1].name", "duplicate node name 'gpu-0'"),),
    ),
    Case(
        "status-port-in-engine-range",
        {
            "cluster.yaml": edit(
                CLUSTER,
                "      address: 10.0.0.2",
                "      address: 10.0.0.2\n      statusPort: 8050",
            )
        },
        (
            Expect(
                "cluster.yaml",
                13,
                7,
                "spec.nodes[1].statusPort",
                "status port 8050 lies inside the engine port range",
            ),
        ),
    ),
    Case(
        "engine-and-ray-ranges-overlap",
        {
            "cluster.yaml": edit(
                CLUSTER, "spec:\n", "spec:\n  ports:\n    ray: {start: 8000, end: 8999}\n"
            )
        },
        (Expect("cluster.yaml", 6, 3, "spec.ports", "engine and ray port ranges overlap"),),
    ),
    Case(
        "second-cluster-document",
        {"zz/cluster-b.yaml": edit(CLUSTER, "name: test", "name: test-b")},
        (
            Expect(
                "zz/cluster-b.yaml",
                2,
                1,
                "kind",
                "a second Cluster document; the first is at {root}/cluster.yaml:1",
            ),
        ),
    ),
    Case(
        "no-cluster-document",
        {"cluster.yaml": None},
        (Expect(".", 1, 1, "", "no Cluster document found (need exactly one)"),),
    ),
]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _check(root: Path, stderr: str, expect: tuple[Expect, ...]) -> None:
    lines = _error_lines(stderr)
    assert len(lines) == len(expect), stderr
    for exp in expect:
        prefix = "error: " + exp.prefix(root).replace(f"{root}/.:", f"{root}:")
        fragment = exp.fragment.replace("{root}", str(root))
        hits = [ln for ln in lines if ln.startswith(prefix) and fragment in ln]
        assert hits, f"expected {prefix}...{fragment}... in:\n{stderr}"
    assert "Traceback" not in stderr


def test_base_repo_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_repo(tmp_path / "repo", {})
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr()
    assert "cluster 'test', 2 node(s), 1 deployment(s)" in out.out
    assert out.err == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_repo(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_repo(tmp_path / "repo", case.files)
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err
    _check(root, err, case.expect)
    assert f"{root}: INVALID, {len(case.expect)} problem(s)" in err


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 20


def test_model_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """671e9 x 2 bytes on 4 x 80 GiB x 0.9: refused with the numbers."""
    chat = edit(CHAT, "    servedName: chat\n", "    servedName: chat\n" + ARCH_671B)
    root = write_repo(tmp_path / "repo", {"chat.yaml": chat})
    assert main(["validate", str(root)]) == 2
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("chat "))
    assert row.split() == ["chat", "1", "4", "1,249.8", "-", "288.0", "does", "not", "fit"]
    (line,) = _error_lines(err)
    assert line.startswith(f"error: {root / 'chat.yaml'}:1:1: spec: does not fit: needs 1249.8 GiB")
    assert "4 GPUs x 80 GiB x 0.9 = 288.0 GiB" in line


def test_all_problems_reported_at_once_sorted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_repo(
        tmp_path / "repo",
        {
            "chat.yaml": edit(CHAT, "replicas: 2", 'replicas: "two"'),
            "cluster.yaml": edit(CLUSTER, "10.0.0.2", "10.0.0.1"),
            "extra.yaml": "- a\n- b\n",
        },
    )
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err
    _check(
        root,
        err,
        (
            Expect("chat.yaml", 9, 3, "spec.replicas", "valid integer"),
            Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "also used by nodes[0]"),
            Expect("extra.yaml", 1, 1, "", "a document must be a mapping"),
        ),
    )
    assert f"{root}: INVALID, 3 problem(s)" in err


def test_problems_sorted_by_file_then_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = edit(edit(CHAT, "replicas: 2", "replicas: -1"), "name: chat", "name: Chat")
    chat = edit(chat, "port: 8000", "port: 0")
    root = write_repo(
        tmp_path / "repo",
        {
            "b.yaml": "- 1\n",
            "chat.yaml": chat,
            "a.yaml": "apiVersion: v0\nkind: Cluster\n---\nkind: ModelDeployment\n",
            "cluster.yaml": edit(
                CLUSTER,
                "count: 8, memoryGib: 80}\n    - name: gpu-1",
                "count: 99, memoryGib: 80}\n    - name: GPU",
            ),
        },
    )
    assert main(["validate", str(root)]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) >= 7
    keys = []
    for line in lines:
        m = ERROR_LINE.match(line)
        assert m, line
        keys.append((m["file"], int(m["line"]), int(m["col"])))
    assert keys == sorted(keys)
    files = [k[0] for k in keys]
    assert files.index(str(root / "a.yaml")) < files.index(str(root / "b.yaml"))
    assert len({k[0] for k in keys}) == 4


def test_cli_subprocess_reports_without_traceback(tmp_path: Path) -> None:
    """The real entry point on a repo full of nasty files: exit 2, no traceback."""
    nasty: dict[str, str | bytes | None] = {}
    for case in CASES:
        for rel, content in case.files.items():
            if content is not None and rel not in BASE:
                nasty[f"{case.id}/{rel}"] = content
    nasty["bad-date.yaml"] = "a: 2024-02-30\n"
    nasty["recursive.yaml"] = "a: &x {b: *x}\n"
    nasty["deep.yaml"] = "[" * 5000
    nasty["bad-float.yaml"] = "a: !!float abc\n"
    nasty["tag.yaml"] = "a: !!python/name:os.system x\n"
    root = write_repo(tmp_path / "repo", nasty)
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert all(ERROR_LINE.match(line) for line in lines), proc.stderr
    for rel, fragment in [
        ("bad-date.yaml:1:4: a: ", "day is out of range for month"),
        ("recursive.yaml:1:4: a.b: ", "recursive alias"),
        ("deep.yaml:1:1: ", "nested too deeply"),
        ("bad-float.yaml:1:4: a: ", "bad value 'abc' for float"),
        ("tag.yaml:1:4: a: ", "could not determine a constructor"),
        ("binary-junk-nul/extra.yaml:2:3: ", "binary content"),
        ("invalid-utf8/extra.yaml:2:7: ", "not valid UTF-8"),
    ]:
        prefix = f"error: {root / rel}"
        assert any(ln.startswith(prefix) and fragment in ln for ln in lines), (rel, proc.stderr)
