"""One strict reader for every YAML file the package reads (hub specs, recipes, presets, run configs, scores).

Safe loading only (no Python objects), and stricter than :func:`yaml.safe_load` where a silent reading would
hide a mistake: a key given twice in one mapping is refused (PyYAML keeps the last one without a word), the
top level must have the expected type, and every problem (unreadable file, not UTF-8, malformed YAML, an
unknown key) is a :class:`~hp_rl.core.errors.ConfigError` whose message names the file, the key and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.errors import ConfigError

__all__ = ["StrictLoader", "check_keys", "load_yaml_text", "read_yaml", "read_yaml_mapping", "read_foreign_yaml"]


class _RepeatedKey(yaml.YAMLError):
    """A key given twice in one mapping."""


# What a configuration file needs, with room: a hub spec, recipe or run config uses few aliases and little nesting.
# Past these a small file can still expand without bound ("billion laughs": nested aliases) or exhaust the stack.
MAX_ALIASES = 100
MAX_DEPTH = 100
MAX_EXPANDED_NODES = 200_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: frozenset[int] = frozenset()) -> int:
    """Nodes of ``node`` with every alias expanded (an alias is its anchor's node object: memoised by identity).

    :raises _TooLarge: for a node that contains itself through an alias (``&a [*a]``): it would expand forever.
    """
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_nodes:
        raise _TooLarge("an alias refers to the collection that holds it (&a [*a]): it expands without end")
    inside = open_nodes | {id(node)}
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, inside) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, inside) + _expanded_size(v, sizes, inside) for k, v in node.value)
    sizes[id(node)] = size
    return size


class _BoundedComposer:
    """Counts aliases and nesting while PyYAML composes the document, and its size with aliases expanded;
    refuses past the limits."""

    def compose_document(self) -> Any:
        node = super().compose_document()  # type: ignore[misc]
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise _TooLarge(
                f"its aliases expand to more than {MAX_EXPANDED_NODES} values (a 'billion laughs' document); "
                "a configuration file is far smaller"
            )
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        loader: Any = self
        if loader.check_event(yaml.AliasEvent):
            loader._aliases = getattr(loader, "_aliases", 0) + 1
            if loader._aliases > MAX_ALIASES:
                raise _TooLarge(f"more than {MAX_ALIASES} aliases (*name): a configuration file does not need them")
        loader._depth = getattr(loader, "_depth", 0) + 1
        try:
            if loader._depth > MAX_DEPTH:
                raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            loader._depth -= 1


class _TooLarge(yaml.YAMLError):
    """A document past the alias or depth limit."""


class StrictLoader(_BoundedComposer, yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that refuses a key repeated within one mapping, and more than
    :data:`MAX_ALIASES` aliases or :data:`MAX_DEPTH` levels of nesting."""


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:  # the mapping's own keys; keys merged in by << may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            raise _RepeatedKey(
                f"line {key_node.start_mark.line + 1}: the key {key!r} is given a second time in one mapping "
                f"(first on line {seen[key].start_mark.line + 1}); keep one"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml_text(text: str, origin: str) -> Any:
    """Parse YAML ``text`` strictly.

    :param origin: where the text came from (a path, ``--set key``), for messages.
    :raises ConfigError: malformed YAML or a repeated key, naming ``origin`` and the line.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: builds no Python objects
    except (_RepeatedKey, _TooLarge) as error:
        raise ConfigError(f"{origin}: {error}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML ({' '.join(str(error).split())}).") from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Read the YAML file ``path`` strictly (an empty file reads as ``None``).

    :param what: what the file is (``hub spec``, ``recipe``), for messages.
    :raises ConfigError: unreadable, not UTF-8, malformed or a repeated key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error.strerror or error}).") from None
    return load_yaml_text(text, str(path))


def read_yaml_mapping(path: str | Path, what: str = "file", allow_empty: bool = False) -> dict[str, Any]:
    """:func:`read_yaml` of a file whose top level must be a mapping (an empty file is ``{}`` with
    ``allow_empty``).

    :raises ConfigError: as :func:`read_yaml`, or when the top level is not a mapping.
    """
    raw = read_yaml(path, what)
    if raw is None and allow_empty:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the {what} must hold a mapping of keys at the top level, not {type(raw).__name__}.")
    return raw


def check_keys(raw: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    """Refuse keys of ``raw`` outside ``allowed``, suggesting the closest allowed one.

    :param where: the file and place (``recipe.yml: experts[2]``), for the message.
    :raises ConfigError: naming the first unknown key and what is allowed.
    """
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(sorted(map(str, allowed)))}.")


class _ForeignLoader(_BoundedComposer, yaml.SafeLoader):
    """Safe YAML for files other programs wrote: rl-baselines3-zoo's ``OrderedDict`` tags read as mappings, any
    other Python tag as ``None`` (never an object)."""


def _ordered_dict(loader: _ForeignLoader, node: yaml.Node) -> dict[Any, Any]:
    if not isinstance(node, yaml.SequenceNode):
        return {}
    args = loader.construct_sequence(node, deep=True)
    pairs = args[0] if args and isinstance(args[0], list) else []
    return {pair[0]: pair[1] for pair in pairs if isinstance(pair, list | tuple) and len(pair) == 2}


def _python_tag(loader: _ForeignLoader, suffix: str, node: yaml.Node) -> None:
    return None


_ForeignLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)
_ForeignLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)


def read_foreign_yaml(path: str | Path, max_bytes: int = 256 * 2**10) -> dict[str, Any] | None:
    """A small YAML mapping written by another program (an rl-zoo ``config.yml``/``args.yml``), or ``None`` when it
    is absent, over ``max_bytes``, unreadable or not a mapping: such files are evidence to use where present,
    never a reason to stop."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > max_bytes:
            return None
        value = yaml.load(path.read_text(encoding="utf-8"), Loader=_ForeignLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else None
