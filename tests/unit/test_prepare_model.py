"""The demo model's cache rule: reuse only a complete directory made from the same GGUF.

The conversion itself runs in the engine environment and is checked for real in
tests/system/test_smollm2.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reconciler.demo.prepare_model import (
    STAMP,
    PrepareError,
    cached,
    locate_source,
    sha256_file,
)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(range(256)) * 40_000  # > one 8 MiB read
    f = tmp_path / "m.gguf"
    f.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(f, lambda done, _total: seen.append(done)) == \
        hashlib.sha256(data).hexdigest()
    assert seen[-1] == len(data)


def make_dir(path: Path, sha: str | None, *, weights: bool = True) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"x")
    if sha is not None:
        (path / STAMP).write_text(json.dumps({"sha256": sha}))
    return path


def test_cache_needs_same_checksum_and_a_complete_directory(tmp_path: Path) -> None:
    assert cached(make_dir(tmp_path / "ok", "abc"), "abc")
    assert not cached(make_dir(tmp_path / "other", "abc"), "def"), "a new GGUF redoes it"
    assert not cached(make_dir(tmp_path / "nostamp", None), "abc")
    assert not cached(make_dir(tmp_path / "noweights", "abc", weights=False), "abc")
    assert not cached(tmp_path / "absent", "abc")
    broken = make_dir(tmp_path / "broken", None)
    (broken / STAMP).write_text("{not json")
    assert not cached(broken, "abc")


def test_missing_engine_environment_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"install-engine-env\.sh"):
        locate_source(tmp_path / "no-such-python")
