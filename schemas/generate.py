"""Generate the JSON Schema files committed under schemas/json/ (editors validate with them)
and the node status schema, reconciler/daemon/status.schema.json (what GET /status serves).

Run `python -m schemas.generate` after changing a model; a test fails while they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.nodeconfig import NodeConfig
from schemas.status import NodeStatus
from schemas.v1alpha1 import Cluster, ModelDeployment

OUT = Path(__file__).parent / "json"
# a file path only: schemas/ imports nothing from reconciler/
STATUS_OUT = Path(__file__).resolve().parent.parent / "reconciler" / "daemon" / "status.schema.json"
BASE_URL = "https://reconciler.dev/schemas/v1alpha1"


def _schema(model: type[Any], title: str) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    cluster = _schema(Cluster, "Cluster")
    deployment = _schema(ModelDeployment, "ModelDeployment")
    node = _schema(NodeConfig, "NodeConfig")
    # One schema for any document of the cluster repo, chosen by `kind`, for the
    # yaml-language-server line at the top of every example file.
    defs: dict[str, Any] = {}
    for part in (cluster, deployment):
        defs.update(part.get("$defs", {}))
    any_doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Cluster repo document",
        "oneOf": [
            {"$ref": "#/$defs/Cluster"},
            {"$ref": "#/$defs/ModelDeployment"},
        ],
        "$defs": {
            **defs,
            "Cluster": {k: v for k, v in cluster.items() if k not in ("$defs", "$schema")},
            "ModelDeployment": {
                k: v for k, v in deployment.items() if k not in ("$defs", "$schema")
            },
        },
    }
    return {
        "cluster.schema.json": cluster,
        "modeldeployment.schema.json": deployment,
        "nodeconfig.schema.json": node,
        "document.schema.json": any_doc,
    }


def status_schema() -> dict[str, Any]:
    """What a daemon serves: every field listed as required, as this version emits them
    all (reading is more lenient, see schemas.status)."""
    schema: dict[str, Any] = NodeStatus.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"{BASE_URL}/nodestatus.schema.json"
    schema["title"] = "NodeStatus"
    schema["description"] = "GET /status of one reconciler daemon."
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out / name
        path.write_text(render(schema))
        written.append(path)
    if out == OUT:
        STATUS_OUT.write_text(render(status_schema()))
        written.append(STATUS_OUT)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)
