"""The committed JSON Schemas are current, printable, and accept the example documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.cli.main import main
from schemas.generate import OUT, STATUS_OUT, json_schemas, render, status_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


class Yaml12Loader(yaml.SafeLoader):
    """Reads numbers as YAML 1.2 does, like the yaml-language-server in editors.

    PyYAML follows YAML 1.1, where `671e9` (no dot) is a string; the reconciler's loader
    accepts it anyway (pydantic converts it), and so does an editor reading YAML 1.2.
    """


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),  # 1.1 wants a dot: 671.0e+9
    list("-+0123456789"),
)


def test_committed_schemas_are_current() -> None:
    rendered = json_schemas()
    committed = {p.name for p in OUT.glob("*.json")}
    stale = [
        name
        for name, schema in rendered.items()
        if not (OUT / name).is_file() or (OUT / name).read_text(encoding="utf-8") != render(schema)
    ]
    extra = sorted(committed - set(rendered))
    assert not stale and not extra, (
        f"schemas/json is stale (differs: {stale}, not generated: {extra}); "
        "run `python -m schemas.generate` and commit the result"
    )


def test_committed_status_schema_is_current() -> None:
    assert STATUS_OUT.read_text(encoding="utf-8") == render(status_schema()), (
        f"{STATUS_OUT} is stale; run `python -m schemas.generate` and commit the result"
    )
    jsonschema.Draft202012Validator.check_schema(json.loads(STATUS_OUT.read_text()))


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_schemas_are_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads((OUT / name).read_text()))


def test_schema_command_prints_document_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Cluster repo document"
    assert schema == json_schemas()["document.schema.json"]


@pytest.mark.parametrize("kind", ["cluster", "Cluster", "modeldeployment", "nodeconfig"])
def test_schema_command_prints_one_kind(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", kind]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json_schemas()[f"{kind.lower()}.schema.json"]
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_command_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "pod"]) == 2
    assert "unknown kind 'pod'" in capsys.readouterr().err


def test_schema_command_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for name in json_schemas():
        assert (tmp_path / name).read_text() == (OUT / name).read_text()


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        if path.name == "placement.lock.yaml":
            continue  # written by `reconciler lock`; not a document kind of the schema
        for i, doc in enumerate(
            yaml.load_all(path.read_text(encoding="utf-8"), Loader=Yaml12Loader)
        ):
            if doc is not None:
                docs.append((f"{path.relative_to(EXAMPLES)}#{i}", doc))
    return docs


EXAMPLE_DOCS = _example_documents()


@pytest.mark.parametrize(("where", "doc"), EXAMPLE_DOCS, ids=[w for w, _ in EXAMPLE_DOCS])
def test_schema_accepts_example(where: str, doc: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(json_schemas()["document.schema.json"])
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors, f"{where}: {errors}"
    kind_schema = json_schemas()[f"{doc['kind'].lower()}.schema.json"]
    jsonschema.validate(doc, kind_schema, cls=jsonschema.Draft202012Validator)


def test_schema_rejects_what_the_loader_rejects() -> None:
    """Editors flag the common mistakes too: unknown field, wrong type, missing port."""
    (where, doc) = next((w, d) for w, d in EXAMPLE_DOCS if d["kind"] == "ModelDeployment")
    validator = jsonschema.Draft202012Validator(json_schemas()["document.schema.json"])
    typo = {**doc, "spec": {**doc["spec"], "replcas": 1}}
    wrong_type = {**doc, "spec": {**doc["spec"], "replicas": "two"}}
    no_port = {**doc, "spec": {k: v for k, v in doc["spec"].items() if k != "port"}}
    for bad in (typo, wrong_type, no_port):
        assert not validator.is_valid(bad), where
