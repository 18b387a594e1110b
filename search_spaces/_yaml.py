"""YAML in and out, with YAML 1.2 floats, and bounded alias expansion.

PyYAML follows YAML 1.1, where ``1e-4`` is a string; researchers write learning rates that
way, so the loader reads it as a float.

Aliases make a small file stand for a huge value (the "billion laughs": nine anchors of nine
aliases each expand to 10^9 nodes). The loader composes the node graph first, which stays
small, counts the nodes its expansion would build, and refuses more than
:data:`MAX_NODES` before anything is constructed.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


# A study spec or a search space has at most a few hundred nodes; a RunConfig export a few
# dozen. 100k leaves room for any real file and caps what an error message can repr.
MAX_NODES = 100_000


class YamlTooLargeError(yaml.YAMLError):
    """The document would expand (through aliases) to more than :data:`MAX_NODES` nodes."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes the document expands to, counted once per node (memoised), stopping at ``limit``."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > 1000:
            raise YamlTooLargeError("the document nests deeper than 1000 levels")
        sizes[key] = limit + 1  # a node that contains itself (a recursive alias) is too large
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                break
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(root, 0)


def load_yaml(text: str, *, max_nodes: int = MAX_NODES) -> Any:
    """One YAML document, safely: no Python objects, and no alias bomb."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_size(root, max_nodes) > max_nodes:
            raise YamlTooLargeError(
                f"the document expands to more than {max_nodes} nodes (aliases repeating "
                "anchors); refused before building it"
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


class _Dumper(yaml.SafeDumper):
    pass


def _flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    # choices read best on one line; mappings stay in block style
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _flow_list)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=99)
