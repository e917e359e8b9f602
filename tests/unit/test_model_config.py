"""config.json of a model directory: read once per revision check (the fit table and the
parallelism checks both ask for it), read afresh by every check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.desired.model_config import one_read_each, read_config


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_once_per_check_and_afresh_for_the_next(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    reads = _counting(monkeypatch)
    with one_read_each():
        assert read_config(str(tmp_path)) == {"num_hidden_layers": 4}
        assert read_config(str(tmp_path)) == {"num_hidden_layers": 4}
        assert read_config(str(tmp_path / "absent")) is None
        assert read_config(str(tmp_path / "absent")) is None
    assert len(reads) == 2
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 8}))
    with one_read_each():
        assert read_config(str(tmp_path)) == {"num_hidden_layers": 8}
    assert read_config(str(tmp_path)) == {"num_hidden_layers": 8}  # outside: every call
    assert len(reads) == 4


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", ""])
def test_anything_but_a_json_object_is_no_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    assert read_config(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("config", "stored"),
    [
        pytest.param({"torch_dtype": "float16"}, "float16", id="transformers-before-4.56"),
        pytest.param({"dtype": "float32"}, "float32", id="transformers-4.56-and-later"),
        pytest.param({"text_config": {"dtype": "float16"}}, "float16", id="nested-text-config"),
        pytest.param({}, "bfloat16", id="unstated-means-bf16"),
    ],
)
def test_the_stored_dtype_under_either_key(tmp_path: Path, config: dict[str, object],
                                           stored: str) -> None:
    from reconciler.desired.fit import model_facts
    from testrigs.builders import deployment

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, **config}))
    dep = deployment("m", model={"path": str(tmp_path), "servedName": "m"})
    assert model_facts(dep).dtype == stored
