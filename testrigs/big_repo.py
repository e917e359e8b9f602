"""A large generated cluster repo on disk, in the shape bench/plan_bench.py builds in memory.

    write_repo(path, nodes=1000, deployments=2000, files=20)

Nodes of 8 GPUs labelled with one of four pools; deployments cycling through tensor
parallel 1/2/4/8, one or two replicas, placed by a pool label selector, each with a declared
architecture so that the fit check computes a verdict. Written in block style, as people
write these files. `files` is the number of deployment files (the Cluster has its own);
0 means one file per deployment.
"""

from __future__ import annotations

from pathlib import Path

API = "reconciler.dev/v1alpha1"
POOLS = 4
STATUS_PORT = 59500  # outside both port ranges


def address(i: int, net: str = "10") -> str:
    """Node i's address: 10.x.y.1, or in a /16 such as 198.19 (net="198.19")."""
    return f"10.{i // 250}.{i % 250}.1" if net == "10" else f"{net}.{i // 250}.{i % 250 + 1}"


def cluster_yaml(n_nodes: int, net: str = "10") -> str:
    lines = [
        f"apiVersion: {API}",
        "kind: Cluster",
        "metadata:",
        "  name: bench",
        "spec:",
        "  ports:",
        "    engine: {start: 1024, end: 59000}",
        "    ray: {start: 60001, end: 65000}",
        "    rayBlockSize: 32",
        "  nodes:",
    ]
    for i in range(n_nodes):
        lines += [
            f"    - name: n{i}",
            f"      address: {address(i, net)}",
            f"      statusPort: {STATUS_PORT}",
            "      labels:",
            f"        pool: p{i % POOLS}",
            f"        rack: r{i // 40}",
            "      gpus:",
            "        count: 8",
            "        model: NVIDIA H100 80GB HBM3",
            "        memoryGib: 80",
        ]
    return "\n".join(lines) + "\n"


def deployment_yaml(j: int) -> str:
    tp = (1, 2, 4, 8)[j % 4]
    return f"""\
apiVersion: {API}
kind: ModelDeployment
metadata:
  name: d{j}
spec:
  model:
    path: /models/d{j}
    servedName: d{j}
    architecture:
      parameters: {tp}e9
      numLayers: 32
      numKvHeads: 8
      headDim: 128
  replicas: {1 + j % 2}
  parallelism:
    tensor: {tp}
  placement:
    nodeSelector:
      pool: p{j % POOLS}
  engine:
    maxModelLen: 8192
  port: {1024 + j * 4}
"""


def write_repo(
    root: Path, nodes: int, deployments: int, files: int = 20, net: str = "10"
) -> list[Path]:
    """Write the repo under `root` (created); returns the files written."""
    root.mkdir(parents=True, exist_ok=True)
    written = [root / "cluster.yaml"]
    written[0].write_text(cluster_yaml(nodes, net))
    per_file = 1 if files <= 0 else -(-deployments // files)
    for start in range(0, deployments, per_file):
        chunk = range(start, min(start + per_file, deployments))
        name = f"d{start}.yaml" if per_file == 1 else f"deployments-{start // per_file:03d}.yaml"
        path = root / name
        path.write_text("---\n".join(deployment_yaml(j) for j in chunk))
        written.append(path)
    return written
