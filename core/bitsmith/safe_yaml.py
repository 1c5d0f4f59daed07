"""The one YAML loader bitsmith uses for every file a user hands it.

``yaml.safe_load`` builds only plain data, but it still accepts documents that are
wrong or hostile: a duplicate key silently keeps the last value, an alias bomb
(``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) expands to gigabytes once walked, deep
nesting overflows the stack, and non-UTF-8 bytes fail with a codec traceback. Here:

- the file (or text) is at most :attr:`YamlLimits.max_bytes` long;
- bytes must be UTF-8 (an optional BOM is allowed); otherwise the byte offset is named;
- a key may appear only once per mapping (``<<`` merge keys keep YAML's meaning);
- nesting is at most :attr:`YamlLimits.max_depth` levels and the document, with every
  alias expanded, at most :attr:`YamlLimits.max_nodes` nodes; recursive aliases are refused.

Every problem is a :class:`~bitsmith.errors.ConfigError` that starts with the source
(file name or ``<string>``) and, where there is one, the line and column::

    job.yaml:7:5: duplicate key 'n_bits' (first at line 5); each key may appear once
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from attrs import define

from .errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "YamlLimits", "load", "load_file", "load_json", "read_text", "short"]


@define(frozen=True, kw_only=True)
class YamlLimits:
    """Caps on one YAML document; the defaults are far above any real config or recipe."""

    max_bytes: int = 16 * 2**20
    """Longest accepted input in bytes (16 MiB)."""
    max_depth: int = 64
    """Deepest accepted nesting of mappings and sequences, aliases expanded."""
    max_nodes: int = 1_000_000
    """Most nodes (scalars, mappings, sequences) once every alias is expanded."""


DEFAULT_LIMITS = YamlLimits()
"""The limits :func:`load` and :func:`load_file` use unless given others."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut in the middle to at most about ``limit`` characters for messages."""
    text = value if isinstance(value, str) and not isinstance(value, Path) else repr(value)
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 10, 10)
    return f"{text[:keep]}...<{len(text) - 2 * keep} characters>...{text[-keep:]}"


class _Problem(Exception):
    """A problem found while loading; turned into a ConfigError with the source's name."""

    def __init__(self, message: str, mark: Optional[yaml.Mark] = None):
        super().__init__(message)
        self.message, self.mark = message, mark


def _at(mark: Optional[yaml.Mark]) -> str:
    return "" if mark is None else f":{mark.line + 1}:{mark.column + 1}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts nesting while composing."""

    def __init__(self, stream: str, limits: YamlLimits):
        super().__init__(stream)
        self._limits = limits
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        self._depth += 1
        try:
            if self._depth > self._limits.max_depth:
                raise _Problem(f"nesting deeper than {self._limits.max_depth} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102 - PyYAML hook
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable key: SafeConstructor reports it
                if first is not key_node.start_mark:
                    raise _Problem(f"duplicate key {short(key, 60)!r} (first at line {first.line + 1}); "
                                   "each key may appear once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:  # noqa: D102 - PyYAML hook
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node, self._limits)
        return self.construct_document(node)


def _check_expansion(root: yaml.Node, limits: YamlLimits) -> None:
    """Refuse recursive aliases and documents too big or too deep once aliases are expanded."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, height)
    on_path: set[int] = set()

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in on_path:
            raise _Problem("recursive alias (a node that contains itself)", node.start_mark)
        if key not in memo:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            on_path.add(key)
            size, height = 1, 1
            for child in children:
                child_size, child_height = visit(child, level + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > limits.max_nodes:
                    raise _Problem(f"more than {limits.max_nodes} nodes once aliases are expanded "
                                   "(an alias bomb?)", node.start_mark)
            on_path.discard(key)
            memo[key] = (size, height)
        size, height = memo[key]
        if level + height - 1 > limits.max_depth:
            raise _Problem(f"nesting deeper than {limits.max_depth} levels once aliases are expanded",
                           node.start_mark)
        return size, height

    visit(root, 1)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None


def load(text: Union[str, bytes], *, source: str = "<string>", limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Parse one YAML (or JSON) document into plain data within ``limits``.

    :param text: the document, as text or as UTF-8 bytes.
    :param source: the name used in error messages (a file name).
    :raises ConfigError: one line naming ``source``, the position and the problem.
    """
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > limits.max_bytes:
        raise ConfigError(f"{source}: {size} bytes is larger than the {limits.max_bytes}-byte limit for YAML input")
    if isinstance(text, bytes):
        text = _decode(text, source)
    loader = None
    try:
        loader = _Loader(text, limits)  # the reader already refuses control characters here
        return loader.get_single_data()
    except _Problem as exc:
        raise ConfigError(f"{source}{_at(exc.mark)}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{source}{_at(mark)}: invalid YAML: {short(problem, 200)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {short(str(exc), 200)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nesting too deep to parse") from None
    except (ValueError, OverflowError) as exc:  # PyYAML's own: '\U00ffffff' escapes, dates like 2001-13-45
        raise ConfigError(f"{source}: invalid YAML value: {short(str(exc), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: Union[str, os.PathLike[str]], *, limits: YamlLimits = DEFAULT_LIMITS) -> str:
    """The UTF-8 text of the file at ``path``, its size checked against ``limits`` before it is read.

    :raises ConfigError: the file is missing, unreadable, too large or not UTF-8.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_bytes:
                raise ConfigError(f"{path}: {size} bytes is larger than the {limits.max_bytes}-byte limit for "
                                  "YAML input")
            data = fh.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limits.max_bytes:  # grew while being read
        raise ConfigError(f"{path}: larger than the {limits.max_bytes}-byte limit for YAML input")
    return _decode(data, str(path))


def load_file(path: Union[str, os.PathLike[str]], *, limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Read and :func:`load` the YAML/JSON file at ``path`` (see :func:`read_text` for the checks).

    :raises ConfigError: the file is missing, unreadable, too large, not UTF-8 or not valid YAML.
    """
    return load(read_text(path, limits=limits), source=str(path), limits=limits)


def load_json(text: str, *, source: str = "<string>", limits: YamlLimits = DEFAULT_LIMITS) -> Any:
    """Parse JSON (faster than YAML for large tables): size capped, no duplicate keys, deep nesting a clean error.

    :raises ConfigError: naming ``source`` and the problem.
    """
    if len(text) > limits.max_bytes:
        raise ConfigError(f"{source}: {len(text)} characters is larger than the {limits.max_bytes}-byte limit")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise _Problem(f"duplicate key {short(key, 60)!r}; each key may appear once")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except _Problem as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nesting too deep to parse") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: invalid JSON: {short(str(exc), 200)}") from None
