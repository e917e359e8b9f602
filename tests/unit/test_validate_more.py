"""More broken cluster repos (issue 13): mistakes the schema accepted and the nodes then
failed on, one case per kind, each refused with a message that says what to do instead.

The same corpus runs through every entry point (validate, plan, diff, the daemon's
source sync) in tests/integration/test_validate_parity.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.unit.test_validate_broken import CHAT, CLUSTER, Expect, _check, edit, write_repo


@dataclass(frozen=True)
class Link:
    """A symbolic link to `target` (relative), written instead of a file."""

    target: str


@dataclass(frozen=True)
class MoreCase:
    """A broken repo: files (text, bytes, None, a Link or NESTED_REPO) and its problems."""

    id: str
    files: dict[str, object]
    expect: tuple[Expect, ...]


NESTED_REPO = "<nested git repository>"  # a directory that is a git repo of its own


def write_case(root: Path, files: dict[str, object]) -> Path:
    plain = {
        k: v
        for k, v in files.items()
        if (isinstance(v, str | bytes) and v != NESTED_REPO) or v is None
    }
    write_repo(root, plain)
    for rel, value in files.items():
        path = root / rel
        if isinstance(value, Link):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(value.target)
        elif value == NESTED_REPO:
            path.mkdir(parents=True, exist_ok=True)
            (path / ".git").mkdir()  # what validate sees; the parity test makes a real one
    return root


def cluster_edit(old: str, new: str) -> dict[str, object]:
    return {"cluster.yaml": edit(CLUSTER, old, new)}


def chat_plus(text: str) -> dict[str, object]:
    return {"chat.yaml": CHAT + text}


def chat_edit(old: str, new: str) -> dict[str, object]:
    return {"chat.yaml": edit(CHAT, old, new)}


ARCH = "    architecture: {parameters: 7e9, numLayers: 32, numKvHeads: 8, headDim: 128"
NODE1 = ("      address: 10.0.0.2\n", 12)  # gpu-1's address line and its line number

NEW_CASES: list[MoreCase] = [
    # --- node addresses and interfaces ---
    MoreCase("address-loopback", cluster_edit("10.0.0.2", "127.0.0.2"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "is a loopback address"),)),
    MoreCase("address-unspecified", cluster_edit("10.0.0.2", "0.0.0.0"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "the unspecified address"),)),
    MoreCase("address-link-local", cluster_edit("10.0.0.2", "169.254.10.2"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "link-local"),)),
    MoreCase("address-multicast", cluster_edit("10.0.0.2", "224.0.0.9"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address", "a multicast address"),)),
    MoreCase("address-same-host-ipv4-mapped", cluster_edit("10.0.0.2", "'::ffff:10.0.0.1'"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address",
                 "is 10.0.0.1 (nodes[0]) in another spelling: one host entered twice"),)),
    MoreCase("address-families-mixed", cluster_edit("10.0.0.2", "'fd00::2'"),
         (Expect("cluster.yaml", 12, 7, "spec.nodes[1].address",
                 "nodes mix IPv4 and IPv6 addresses"),)),
    MoreCase("nccl-ifname-too-long",
         cluster_edit("spec:\n", "spec:\n  network: {ncclSocketIfname: enp175s0f0np0-fab}\n"),
         (Expect("cluster.yaml", 6, 13, "spec.network.ncclSocketIfname",
                 "is not an interface name (at most 15 characters"),)),
    MoreCase("gloo-ifname-list-with-space",
         cluster_edit("spec:\n", "spec:\n  network: {glooSocketIfname: 'eth2, eth3'}\n"),
         (Expect("cluster.yaml", 6, 13, "spec.network.glooSocketIfname",
                 "is not an interface name"),)),
    MoreCase("nccl-ib-hca-with-space",
         cluster_edit("spec:\n", "spec:\n  network: {ncclIbHca: 'mlx5_0 mlx5_1'}\n"),
         (Expect("cluster.yaml", 6, 13, "spec.network.ncclIbHca", "without whitespace"),)),
    # --- ports ---
    MoreCase("status-port-in-ray-range",
         cluster_edit(NODE1[0], NODE1[0] + "      statusPort: 20050\n"),
         (Expect("cluster.yaml", 13, 7, "spec.nodes[1].statusPort",
                 "lies inside the Ray port range 20000-29999"),)),
    MoreCase("ray-block-too-small", cluster_edit("spec:\n", "spec:\n  ports: {rayBlockSize: 20}\n"),
         (Expect("cluster.yaml", 6, 11, "spec.ports.rayBlockSize",
                 "20 ports per Ray block; one Ray cluster needs at least 26"),)),
    # --- parallel sizes the model cannot be split into ---
    MoreCase("tensor-does-not-divide-heads",
         chat_edit("    servedName: chat\n",
                   "    servedName: chat\n" + ARCH + ", numAttentionHeads: 14}\n"),
         (Expect("chat.yaml", 11, 17, "spec.parallelism.tensor",
                 "tensor parallel 4 does not divide the model's 14 attention heads"),)),
    MoreCase("tensor-cannot-split-kv-heads",
         chat_edit("    servedName: chat\n",
                   "    servedName: chat\n" + ARCH.replace("numKvHeads: 8", "numKvHeads: 6")
                   + ", numAttentionHeads: 48}\n"),
         (Expect("chat.yaml", 11, 17, "spec.parallelism.tensor",
                 "cannot split the model's 6 KV heads"),)),
    MoreCase("pipeline-exceeds-layers",
         chat_edit("    servedName: chat\n  replicas: 2\n  parallelism: {tensor: 4}",
                   "    servedName: chat\n" + ARCH.replace("numLayers: 32", "numLayers: 2")
                   + "}\n  replicas: 2\n  parallelism: {tensor: 1, pipeline: 4}"),
         (Expect("chat.yaml", 11, 28, "spec.parallelism.pipeline",
                 "pipeline parallel 4 exceeds the model's 2 layers"),)),
    # --- names longer than where they are used ---
    MoreCase("ray-label-too-long",
         chat_edit("name: chat\n", "name: " + "c" * 62 + "\n")
         | {"chat.yaml": edit(edit(CHAT, "name: chat\n", "name: " + "c" * 62 + "\n"),
                              "{tensor: 4}", "{tensor: 8, pipeline: 2}\n  replicas: 1")
            .replace("  replicas: 2\n", "")},
         (Expect("chat.yaml", 4, 3, "metadata.name",
                 "is 64 characters, Ray allows 63; shorten the name to at most 61"),)),
    MoreCase("served-name-with-space", chat_edit("servedName: chat", "servedName: 'chat model'"),
         (Expect("chat.yaml", 8, 5, "spec.model.servedName", "contains whitespace"),)),
    # --- extraArgs vLLM reads differently from how they look ---
    MoreCase("extra-args-underscore-spelling",
         chat_plus('  engine:\n    extraArgs: ["--max_model_len", "4096"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "'--max_model_len' is --max-model-len in another spelling"),)),
    MoreCase("extra-args-underscore-with-value",
         chat_plus('  engine:\n    extraArgs: ["--tensor_parallel_size=2"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "is --tensor-parallel-size in another spelling"),)),
    MoreCase("extra-args-abbreviation",
         chat_plus('  engine:\n    extraArgs: ["--gpu-memory", "0.5"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "'--gpu-memory' is --gpu-memory-utilization in another spelling"),)),
    MoreCase("extra-args-short-flag-attached",
         chat_plus('  engine:\n    extraArgs: ["-tp8"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "'-tp8' is -tp in another spelling"),)),
    MoreCase("extra-args-two-flags-in-one-item",
         chat_plus('  engine:\n    extraArgs: ["--trust-remote-code --enforce-eager"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "packs 2 words into one argument"),)),
    MoreCase("extra-args-flag-and-value-in-one-item",
         chat_plus('  engine:\n    extraArgs: ["--max-num-seqs 256"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "write one item per word: ['--max-num-seqs', '256']"),)),
    MoreCase("extra-args-stray-value", chat_plus('  engine:\n    extraArgs: ["256"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "a value with no option before it"),)),
    MoreCase("extra-args-config-file",
         chat_plus('  engine:\n    extraArgs: ["--config", "/etc/vllm.yaml"]\n'),
         (Expect("chat.yaml", 13, 17, "spec.engine.extraArgs[0]",
                 "--config reads more options from a file on the node"),)),
    MoreCase("extra-args-end-of-options",
         chat_plus('  engine:\n    extraArgs: ["--enforce-eager", "--"]\n'),
         (Expect("chat.yaml", 13, 36, "spec.engine.extraArgs[1]", "'--' ends vLLM's options"),)),
    # --- hub ids that are local paths ---
    MoreCase("hub-id-absolute-path", chat_edit("path: /models/chat", "hubId: /etc"),
         (Expect("chat.yaml", 7, 5, "spec.model.hubId",
                 "'/etc' is a local path, not a hub id"),)),
    MoreCase("hub-id-relative-escape", chat_edit("path: /models/chat", "hubId: ../../srv/m"),
         (Expect("chat.yaml", 7, 5, "spec.model.hubId", "is a local path, not a hub id"),)),
    MoreCase("hub-id-home-dir", chat_edit("path: /models/chat", "hubId: ~/models/m"),
         (Expect("chat.yaml", 7, 5, "spec.model.hubId", "is a local path, not a hub id"),)),
    MoreCase("hub-id-looks-like-a-flag", chat_edit("path: /models/chat", "hubId: --help"),
         (Expect("chat.yaml", 7, 5, "spec.model.hubId",
                 "starts with '-': vLLM would read it as an option"),)),
    MoreCase("hub-id-three-parts", chat_edit("path: /models/chat", "hubId: a/b/c"),
         (Expect("chat.yaml", 7, 5, "spec.model.hubId", "is not a hub id ('org/name'"),)),
    # --- environment names the daemon sets itself ---
    MoreCase("env-nccl-ib-hca", chat_plus("  engine:\n    env: {NCCL_IB_HCA: mlx5}\n"),
         (Expect("chat.yaml", 13, 11, "spec.engine.env.NCCL_IB_HCA",
                 "set by the daemon and may not be overridden; set spec.network.ncclIbHca"),)),
    MoreCase("env-ray-usage-stats",
         chat_plus("  engine:\n    env: {RAY_USAGE_STATS_ENABLED: '1'}\n"),
         (Expect("chat.yaml", 13, 11, "spec.engine.env.RAY_USAGE_STATS_ENABLED",
                 "set by the daemon"),)),
    MoreCase("env-ownership-marker",
         chat_plus("  engine:\n    env: {RECONCILER_SPEC_HASH: abc}\n"),
         (Expect("chat.yaml", 13, 11, "spec.engine.env.RECONCILER_SPEC_HASH",
                 "set by the daemon"),)),
    MoreCase("env-vllm-host-ip", chat_plus("  engine:\n    env: {VLLM_HOST_IP: 10.0.0.9}\n"),
         (Expect("chat.yaml", 13, 11, "spec.engine.env.VLLM_HOST_IP",
                 "set the node's address in the Cluster document"),)),
    # --- files validate would read but the daemon's export would not ---
    MoreCase("symlinked-document", {"other.yaml": Link("chat.yaml")},
         (Expect("other.yaml", 1, 1, "", "a symbolic link (to chat.yaml): the daemon's git "
                 "export leaves symlinks out"),)),
    MoreCase("symlinked-directory", {"linked": Link(".")},
         (Expect("linked", 1, 1, "", "a symbolic link (to .)"),)),
    MoreCase("uppercase-extension", {"extra.YAML": "a: 1\n"},
         (Expect("extra.YAML", 1, 1, "", "extension '.YAML': only lowercase"),)),
    MoreCase("nested-repository", {"vendor": NESTED_REPO, "vendor/x.yaml": "a: 1\n"},
         (Expect("vendor", 1, 1, "", "a git submodule or nested repository"),)),
    # --- fit, the override and the lock file ---
    MoreCase("does-not-fit",
         chat_edit("    servedName: chat\n", "    servedName: chat\n" + ARCH.replace(
             "7e9", "671e9") + "}\n"),
         (Expect("chat.yaml", 1, 1, "spec", "does not fit: needs"),)),
    MoreCase("fit-override-without-reason", chat_plus("  fit: {override: true}\n"),
         (Expect("chat.yaml", 12, 3, "spec.fit", "an override needs a reason"),)),
    MoreCase("lock-bad-replica-key",
         {"placement.lock.yaml": "apiVersion: reconciler.dev/v1alpha1\nkind: PlacementLock\n"
          "replicas:\n  chat-0: {nodes: [gpu-0]}\n"},
         (Expect("placement.lock.yaml", 3, 1, "replicas", "'chat-0' is not a replica key"),)),
    MoreCase("lock-unknown-field",
         {"placement.lock.yaml": "apiVersion: reconciler.dev/v1alpha1\nkind: PlacementLock\n"
          "replicas:\n  chat/0: {nodes: [gpu-0], gpus: 4}\n"},
         (Expect("placement.lock.yaml", 4, 28, "replicas.chat/0.gpus", "unknown field"),)),
    # --- control characters in keys are escaped, never printed raw ---
    MoreCase("key-with-newline-forging-an-error-line",
         chat_plus('  "x\\nerror: forged": 1\n'),
         (Expect("chat.yaml", 12, 3, "spec.x\\x0aerror: forged", "unknown field"),)),
    MoreCase("key-with-terminal-escape", chat_plus('  "\\e[31mred": 1\n'),
         (Expect("chat.yaml", 12, 3, "spec.\\x1b[31mred", "unknown field"),)),
]


def test_new_case_ids_are_unique_and_many() -> None:
    from tests.unit.test_validate_broken import CASES

    ids = [c.id for c in NEW_CASES]
    assert len(set(ids)) == len(ids) >= 30
    assert not set(ids) & {c.id for c in CASES}


@pytest.mark.parametrize("case", NEW_CASES, ids=[c.id for c in NEW_CASES])
def test_more_broken_repos(
    case: MoreCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_case(tmp_path / "repo", case.files)
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err
    _check(root, err, case.expect)
    assert f"{root}: INVALID, {len(case.expect)} problem(s)" in err
    # one line per problem: no control character reaches the terminal
    assert all(ch.isprintable() for ch in err.replace("\n", ""))


@pytest.mark.parametrize(
    "arg",
    [
        pytest.param("--hf-overrides={\"rope_scaling\": {\"factor\": 2}}", id="json-value"),
        pytest.param("--note=; touch /tmp/x", id="shell-text-as-a-value"),
    ],
)
def test_a_value_after_equals_may_hold_spaces(
    arg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only `--flag value` packed before any `=` is refused: after `=` it is one value."""
    root = write_case(tmp_path / "repo", chat_plus(f"  engine:\n    extraArgs: [{arg!r}]\n"))
    assert main(["validate", str(root)]) == 0, capsys.readouterr().err


def test_fit_override_is_accepted_and_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = edit(CHAT, "    servedName: chat\n", "    servedName: chat\n" + ARCH.replace(
        "7e9", "671e9") + "}\n") + "  fit: {override: true, reason: 'runs at 0.95, measured'}\n"
    root = write_case(tmp_path / "repo", {"chat.yaml": chat})
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("chat "))
    assert row.split()[-1] == "overridden"
    assert "chat: estimate says does not fit: needs" in out
    assert "overridden: runs at 0.95, measured" in out


def test_validate_notes_yaml_that_is_not_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    root = write_case(tmp_path / "repo", {})
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env)
    (root / "later.yaml").write_text(edit(CHAT, "name: chat", "name: later").replace(
        "port: 8000", "port: 8010"))
    assert main(["validate", str(root)]) == 0
    err = capsys.readouterr().err
    assert "note: later.yaml is not committed: the daemon reads only what is committed" in err
