"""Export: write the repo's `path` sub-directory at one revision into a directory of its
own (no work tree, no checkout: blobs are streamed out of `git cat-file --batch`).

Exports of the last few revisions are kept (and their commits pinned by a ref), so the
daemon can go back to the last good one after a restart without the network.
Submodules and symlinks are not followed (exported as a marker directory and a link, for
validation to report); files bigger than `max_blob_bytes` refuse the
revision; a file name that would escape the export directory refuses it too.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.ports.git.protocol import PermanentSourceError, TemporarySourceError
from reconciler.ports.git.runner import GitRunner, tail

_log = logging.getLogger(__name__)

KEEP_REF_PREFIX = "refs/reconciler/exports/"


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    kind: str
    oid: str
    size: int
    name: str


def list_tree(
    runner: GitRunner, path: str, sha: str, suspect: Callable[[], None]
) -> list[TreeEntry]:
    treeish = f"{sha}^{{tree}}" if path == "." else f"{sha}:{path}"
    res = runner.run(["cat-file", "-t", treeish], check=False)
    if res.status != 0 or res.text != "tree":
        what = "is not a directory" if res.status == 0 else "does not exist"
        raise PermanentSourceError(
            "PathNotFound",
            f"path {path!r} {what} at {sha}",
            revision=sha,
        )
    res = runner.run(["ls-tree", "-r", "-l", "-z", treeish], check=False)
    if res.status != 0:
        suspect()
        raise TemporarySourceError(
            "CheckoutCorrupt",
            f"cannot list {path!r} at {sha}",
            revision=sha,
        )
    entries = []
    for record in res.stdout.split(b"\x00"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid, size = meta.decode("ascii").split()
        entries.append(
            TreeEntry(mode, kind, oid, int(size) if size != "-" else 0, os.fsdecode(name))
        )
    return entries


def materialize(
    runner: GitRunner, path: str, sha: str, final: Path, suspect: Callable[[], None]
) -> None:
    entries = list_tree(runner, path, sha, suspect)
    blobs: list[TreeEntry] = []
    # Symlinks and submodules are never followed, but they are exported as what they are
    # (a link; a directory holding a .git file) so that validation reports them here just
    # as on a working tree (desired.validation.file_problems) and the loader skips them.
    links: list[str] = []
    modules: list[str] = []
    for e in entries:
        if e.kind != "blob":
            _log.warning("git export skips submodule", extra={"revision": sha, "file": e.name})
            modules.append(e.name)
        elif e.mode == "120000":
            _log.warning("git export skips symlink", extra={"revision": sha, "file": e.name})
            links.append(e.name)
            blobs.append(e)  # its content is the link's target
        elif e.size > runner.config.max_blob_bytes:
            raise PermanentSourceError(
                "BlobTooLarge",
                f"{e.name} is {e.size} bytes, more than max_blob_bytes "
                f"{runner.config.max_blob_bytes}",
                revision=sha,
            )
        else:
            blobs.append(e)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=final.parent))
    try:
        tree = tmp / "tree"
        tree.mkdir()
        write_blobs(runner, sha, blobs, tree, tmp, suspect)
        _mark_skipped(tree, links, modules)
        (tmp / "REVISION").write_text(f"{sha}\n{path}\n", encoding="utf-8")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _mark_skipped(tree: Path, links: list[str], modules: list[str]) -> None:
    root = tree.resolve()
    for name in links:
        link = tree / name
        target = link.read_bytes()[:4096]
        link.unlink()
        os.symlink(os.fsdecode(target), link)
    for name in modules:
        marker = tree / name
        if root in marker.resolve().parents:
            marker.mkdir(parents=True, exist_ok=True)
            (marker / ".git").write_text("submodule: left out of the export\n")


def write_blobs(
    runner: GitRunner,
    sha: str,
    blobs: list[TreeEntry],
    tree: Path,
    tmp: Path,
    suspect: Callable[[], None],
) -> None:
    if not blobs:
        return
    batch_in = tmp / "batch.in"
    batch_out = tmp / "batch.out"
    batch_in.write_text("".join(f"{b.oid}\n" for b in blobs), encoding="ascii")
    with batch_in.open("rb") as fin, batch_out.open("wb") as fout:
        res = runner.run(["cat-file", "--batch"], istream=fin, output_stream=fout, check=False)
    if res.status != 0:
        suspect()
        raise TemporarySourceError(
            "CheckoutCorrupt",
            f"cannot read blobs of {sha}: {tail(res.stderr)}",
            revision=sha,
        )
    root = tree.resolve()
    with batch_out.open("rb") as stream:
        for blob in blobs:
            header = stream.readline().decode("ascii", "replace").split()
            if len(header) != 3 or header[0] != blob.oid or header[1] != "blob":
                suspect()
                raise TemporarySourceError(
                    "CheckoutCorrupt",
                    f"object {blob.oid} ({blob.name}) unreadable at {sha}",
                    revision=sha,
                )
            size = int(header[2])
            dest = (tree / blob.name).resolve()
            if root not in dest.parents:
                raise PermanentSourceError(
                    "PathNotFound",
                    f"unsafe file name {blob.name!r}",
                    revision=sha,
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as out:
                remaining = size
                while remaining:
                    chunk = stream.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise TemporarySourceError(
                            "CheckoutCorrupt",
                            "short read from cat-file",
                            revision=sha,
                        )
                    out.write(chunk)
                    remaining -= len(chunk)
            if blob.mode == "100755":
                dest.chmod(0o755)
            stream.read(1)  # the newline after each object
    batch_in.unlink()
    batch_out.unlink()


def clean_temp_exports(exports: Path) -> None:
    for leftover in exports.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def keep_ref(runner: GitRunner, sha: str) -> None:
    # Keeps exported commits reachable in the mirror, so gc never drops the last good
    # revision even after a force-push.
    runner.run(["update-ref", f"{KEEP_REF_PREFIX}{sha}", sha], check=False)


def prune_exports(runner: GitRunner, exports: Path, keep: Path) -> None:
    dirs = [d for d in exports.iterdir() if d.is_dir() and not d.name.startswith(".")]
    dirs.sort(key=lambda d: (d != keep, -d.stat().st_mtime))
    kept, dropped = dirs[: runner.config.keep_exports], dirs[runner.config.keep_exports :]
    for d in dropped:
        shutil.rmtree(d, ignore_errors=True)
    kept_shas = {d.name[:40] for d in kept}
    res = runner.run(["for-each-ref", "--format=%(refname)", KEEP_REF_PREFIX], check=False)
    for ref in res.text.splitlines():
        if ref.removeprefix(KEEP_REF_PREFIX) not in kept_shas:
            runner.run(["update-ref", "-d", ref], check=False)
