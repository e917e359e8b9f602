"""Reusing the parse of unchanged files (reconciler/desired/parse_cache.py): a revision
loaded after another, each in a directory of its own as the daemon's exports are, gives
exactly what a load without the cache gives: the same state and sources (naming the new
directory's files), the same problems with the same file:line:col, also where the problem
lies in a file that was reused."""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.desired.parse_cache import ParseCache
from reconciler.desired.validation import Verdict, check_revision
from reconciler.desired.yaml_positions import ReusedDocument, read_documents
from testrigs.big_repo import cluster_yaml, write_repo


def _revision(tmp: Path, name: str, base: Path, changes: dict[str, str | None]) -> Path:
    root = tmp / name / "tree"
    shutil.copytree(base, root)
    for file, text in changes.items():
        if text is None:
            (root / file).unlink()
        else:
            (root / file).write_text(text)
    return root


def _same(cached: Verdict, fresh: Verdict) -> None:
    assert cached.problems == fresh.problems
    assert cached.state == fresh.state
    assert cached.fit == fresh.fit
    if fresh.state is not None:
        assert cached.state is not None and cached.state.sources == fresh.state.sources


def _base(tmp: Path) -> Path:
    write_repo(tmp / "base", nodes=8, deployments=20, files=4)
    return tmp / "base"


def test_a_changed_file_is_parsed_and_the_others_are_reused(tmp_path: Path) -> None:
    base = _base(tmp_path)
    cache = ParseCache()
    first = _revision(tmp_path, "r1", base, {})
    assert check_revision(first, "r1", cache=cache).valid
    assert (cache.hits, cache.misses) == (0, 5)
    changed = (base / "deployments-003.yaml").read_text().replace(
        "maxModelLen: 8192", "maxModelLen: 4096", 1)
    second = _revision(tmp_path, "r2", base, {"deployments-003.yaml": changed})
    cached = check_revision(second, "r2", cache=cache)
    assert (cache.hits, cache.misses) == (4, 1)
    _same(cached, check_revision(second, "r2"))
    assert cached.state is not None
    assert all(str(second) in file for file, _ in cached.state.sources.values())


def test_a_problem_in_a_reused_file_keeps_its_file_line_and_column(tmp_path: Path) -> None:
    base = _base(tmp_path)
    cache = ParseCache()
    assert check_revision(_revision(tmp_path, "r1", base, {}), cache=cache).valid
    # only the Cluster changes: pool p1 is gone, so the deployments placed on it (in files
    # that did not change) now match no node; and a new file repeats d0's name, whose
    # first definition is in a reused file
    cluster = cluster_yaml(8).replace("pool: p1", "pool: q1")
    dup = (base / "deployments-000.yaml").read_text().split("---\n")[0].replace(
        "port: 1024", "port: 9000")
    second = _revision(tmp_path, "r2", base, {"cluster.yaml": cluster, "zz.yaml": dup})
    cached = check_revision(second, cache=cache)
    fresh = check_revision(second)
    assert cache.hits == 4
    assert not fresh.valid and len(fresh.problems) >= 2
    _same(cached, fresh)
    reused = str(second / "deployments-000.yaml")
    assert any(p.file == reused and p.field.startswith("spec") for p in fresh.problems)
    assert any(f"also at {reused}:" in p.message for p in fresh.problems)


def test_a_file_with_a_problem_is_never_reused(tmp_path: Path) -> None:
    base = _base(tmp_path)
    bad = (base / "deployments-001.yaml").read_text().replace("replicas:", "replicaz:", 1)
    cache = ParseCache()
    for name in ("r1", "r2"):
        root = _revision(tmp_path, name, base, {"deployments-001.yaml": bad})
        cached = check_revision(root, cache=cache)
        _same(cached, check_revision(root))
        assert not cached.valid and all(p.file.startswith(str(root)) for p in cached.problems)
    assert (cache.hits, cache.misses) == (4, 1)


def test_only_the_latest_load_is_kept(tmp_path: Path) -> None:
    base = _base(tmp_path)
    cache = ParseCache()
    check_revision(_revision(tmp_path, "r1", base, {}), cache=cache)
    gone = _revision(tmp_path, "r2", base, {"deployments-002.yaml": None})
    check_revision(gone, cache=cache)
    back = _revision(tmp_path, "r3", base, {})
    _same(check_revision(back, cache=cache), check_revision(back))
    assert (cache.hits, cache.misses) == (4, 1)  # the file r2 lacked is parsed again


def test_a_reused_document_finds_the_positions_a_fresh_parse_finds(tmp_path: Path) -> None:
    base = _base(tmp_path)
    file = base / "deployments-002.yaml"
    docs, problems = read_documents(file)
    assert not problems and len(docs) == 5
    raw = file.read_bytes()
    for doc in docs:
        again = ReusedDocument(file, doc.index, raw, doc.where(()))
        for path in [(), ("spec",), ("spec", "port"), ("spec", "engine", "maxModelLen"),
                     ("spec", "nope", "deeper"), ("metadata", "name")]:
            assert again.where(path) == doc.where(path), (doc.index, path)
        assert again.problem(("spec", "port"), "x") == doc.problem(("spec", "port"), "x")
