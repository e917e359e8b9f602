"""YAML reading that remembers where every value came from.

PyYAML's plain loaders forget positions and silently keep the last of duplicate keys.
Here each document becomes plain Python data plus a map from field path to
(line, column), so that schema errors can point at the exact spot in the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.core.errors import PermanentError, Problem

FieldPath = tuple[str | int, ...]
# Aliases can expand exponentially ("billion laughs"); real documents are far smaller.
MAX_NODES = 200_000
MAX_FILE_BYTES = 4 * 1024 * 1024
# Nesting deeper than this is no desired state; it would only exhaust the Python stack.
MAX_DEPTH = 100


@dataclass
class Document:
    file: Path
    index: int  # position of the document within its file, from 0
    data: Any
    positions: dict[FieldPath, tuple[int, int]] = field(default_factory=dict)
    # values already reported as unreadable (and read as null): schema errors there are noise
    unreadable: set[FieldPath] = field(default_factory=set)

    def where(self, path: FieldPath) -> tuple[int, int]:
        """Position of the longest prefix of `path` that exists in the file."""
        for cut in range(len(path), -1, -1):
            pos = self.positions.get(path[:cut])
            if pos is not None:
                return pos
        return (1, 1)

    def problem(self, path: FieldPath, message: str) -> Problem:
        line, col = self.where(path)
        return Problem(str(self.file), line, col, format_path(path), message)


class ReusedDocument(Document):
    """A document of a file whose very bytes were parsed and validated before (see
    reconciler.desired.parse_cache): no data, and positions found again, by parsing the
    same bytes the same way, only when a problem needs one."""

    def __init__(self, file: Path, index: int, raw: bytes, root: tuple[int, int]) -> None:
        super().__init__(file=file, index=index, data=None)
        self._raw = raw
        self._root = root  # where(()): every document's own line, asked for each one
        self._parsed = False

    def where(self, path: FieldPath) -> tuple[int, int]:
        if not path:
            return self._root
        if not self._parsed:
            self._parsed = True
            docs, _ = documents_of(self.file, self._raw)
            self.positions = next((d.positions for d in docs if d.index == self.index), {})
        return super().where(path)


def format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Walker:
    def __init__(self, file: Path, doc: Document) -> None:
        self.file = file
        self.doc = doc
        self.count = 0
        self.problems: list[Problem] = []
        self.constructor = SafeConstructor()
        self.open: set[int] = set()  # ids of the collection nodes being walked (alias cycles)

    def walk(self, node: Node, path: FieldPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        self.doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.open:
            self._add(node, path, "recursive alias: an anchor is used inside itself")
            self.doc.unreadable.add(path)
            return None
        if len(path) >= MAX_DEPTH:
            self._add(node, path, f"nested deeper than {MAX_DEPTH} levels")
            self.doc.unreadable.add(path)
            return None
        self.open.add(id(node))
        try:
            return self._collection(node, path)
        finally:
            self.open.discard(id(node))

    def _collection(self, node: Node, path: FieldPath) -> Any:
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._add(key_node, path, "merge keys ('<<') are not supported; write it out")
                    continue
                if not isinstance(key_node, ScalarNode):
                    self._add(key_node, path, "keys must be plain scalars")
                    continue
                key = self._scalar(key_node, path)
                if not isinstance(key, str | int | bool | float) and key is not None:
                    self._add(key_node, path, f"unsupported key type {type(key).__name__}")
                    continue
                key_s = str(key) if not isinstance(key, str) else key
                if key_s in seen:
                    self._add(
                        key_node,
                        (*path, key_s),
                        f"duplicate key {key_s!r} (first defined on line {seen[key_s]})",
                    )
                    continue
                seen[key_s] = key_node.start_mark.line + 1
                self.doc.positions[(*path, key_s)] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                out[key_s] = self.walk(value_node, (*path, key_s))
                # the key's own position was set above; keep it (more useful than the value's)
            return out
        assert isinstance(node, SequenceNode)
        return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]

    def _scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        if node.tag == _STR_TAG:
            return node.value  # what SafeConstructor makes of a string, minus its bookkeeping
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._add(node, path, f"bad value: {exc.problem or exc}")
        except yaml.YAMLError as exc:
            self._add(node, path, f"bad value: {exc}")
        except Exception as exc:
            # PyYAML's scalar constructors let plain exceptions escape: `2024-13-01` (resolved
            # as a date) ValueError, `!!int abc` ValueError, `!!int ''` IndexError...
            self._add(node, path, f"bad value {node.value!r} for {_tag_name(node.tag)}: {exc}")
        self.doc.unreadable.add(path)
        return None

    def _add(self, node: Node, path: FieldPath, message: str) -> None:
        self.problems.append(
            Problem(
                str(self.file),
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                format_path(path),
                message,
            )
        )


_STR_TAG = "tag:yaml.org,2002:str"


class _TooLarge(PermanentError):
    """A document too large to load; reported as a Problem, never raised further."""


def _tag_name(tag: str) -> str:
    return tag.removeprefix("tag:yaml.org,2002:")


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


# libyaml (when PyYAML was built with it) composes ~20x faster than PyYAML's pure-Python
# scanner. Its error messages and a few acceptance rules differ, so it is used only for
# text that both accept: any libyaml error, and any character the pure reader refuses,
# sends the file through the pure-Python path, which then words the problem as always.
# libyaml caps nesting at 1,000 levels, so its recursive composer cannot exhaust the stack.
_CLoader: type[Any] | None = getattr(yaml, "CSafeLoader", None)
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE
# Where the two disagree on what is valid (found by tests/unit/test_yaml_fast_path.py):
# tabs (libyaml allows more of them), byte order marks, the line breaks of YAML 1.1
# beyond \r and \n (NEL, LS, PS), tags (`!`: libyaml reads some PyYAML refuses), and a
# comment right after a block scalar's header (`|#`). A false alarm costs only speed.
_PURE_ONLY = re.compile("[\t\ufeff\x85\u2028\u2029]|(?:^|[\\s\\[\\]{},:?-])!|[|>][-+0-9]*#")


def _compose_fast(text: str) -> list[Node] | None:
    if _CLoader is None or _NON_PRINTABLE.search(text) or _PURE_ONLY.search(text):
        return None
    try:
        return list(yaml.compose_all(text, Loader=_CLoader))
    except Exception:
        return None


def read_documents(file: Path) -> tuple[list[Document], list[Problem]]:
    """Parse every document in `file`. Never raises for bad content: returns problems."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return [], [Problem(str(file), 1, 1, "", f"cannot read file: {exc.strerror}")]
    return documents_of(file, raw)


def documents_of(file: Path, raw: bytes) -> tuple[list[Document], list[Problem]]:
    """Parse every document in `raw`, the content of `file` (named in problems)."""
    if len(raw) > MAX_FILE_BYTES:
        return [], [
            Problem(str(file), 1, 1, "", f"file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}")
        ]
    if b"\0" in raw:
        line, col = _line_col(raw.decode("latin-1"), raw.index(b"\0"))
        return [], [Problem(str(file), line, col, "", "binary content (NUL byte): not a YAML file")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(raw.decode("latin-1"), exc.start)
        return [], [Problem(str(file), line, col, "", "not valid UTF-8 text")]
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        return [], [Problem(str(file), 1, 1, "", "file is empty: no YAML documents in it")]

    docs: list[Document] = []
    problems: list[Problem] = []
    composed = _compose_fast(text)
    stream = composed if composed is not None else yaml.compose_all(text, Loader=yaml.SafeLoader)
    try:
        for index, node in enumerate(stream):
            if node is None:
                continue
            doc = Document(file=file, index=index, data=None)
            walker = _Walker(file, doc)
            try:
                doc.data = walker.walk(node, ())
            except _TooLarge:
                problems.append(
                    Problem(str(file), 1, 1, "", f"document expands to over {MAX_NODES} nodes")
                )
                continue
            problems.extend(walker.problems)
            if doc.data is None:
                continue
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        message = exc.problem or "invalid YAML"
        if "\t" in message or (mark is not None and _tab_at(text, mark.line, mark.column)):
            message = "tab character: YAML indentation must use spaces"
        else:
            message = f"invalid YAML: {message}"
            if exc.context:
                message += f" ({exc.context})"
        problems.append(Problem(str(file), line, col, "", message))
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problems.append(
            Problem(str(file), line, col, "", f"invalid YAML: character #x{char:04x}: {exc.reason}")
        )
    except yaml.YAMLError as exc:
        problems.append(Problem(str(file), 1, 1, "", f"invalid YAML: {exc}"))
    except RecursionError:
        # PyYAML's composer recurses once per nesting level
        problems.append(Problem(str(file), 1, 1, "", "nested too deeply to be a YAML document"))
    return docs, problems


def _tab_at(text: str, line: int, column: int) -> bool:
    lines = text.splitlines()
    if line >= len(lines):
        return False
    prefix = lines[line][: column + 1]
    return "\t" in prefix
