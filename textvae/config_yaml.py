"""Reading config YAML strictly (a key repeated at any depth is refused) and applying `--set section.key=value`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from textvae.config_checks import label, short
from textvae.errors import UserError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names a key twice; `load` turns it into a UserError naming the file."""

    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {short(key)} appears twice, on lines {first} and {second}")


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in a mapping at any depth (the safe loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            # merge keys (<<) may repeat; a non-scalar key is refused by the safe loader itself
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads 1e-3 as a string: its floats need a dot. A float in exponent form without one, as YAML 1.2
# and Python read it (1e-3, 5E4, -2e+1), resolves to a float too.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with StrictLoader; every failure is a yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader: no Python objects
    except (ValueError, RecursionError) as error:  # an int of over 4,300 digits; nesting deeper than Python's stack
        raise yaml.YAMLError(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML scalars) to a nested mapping."""
    # copy the sections (a non-mapping one is left for from_dict to refuse, naming it)
    raw = {k: dict(v) if isinstance(v, dict) else ({} if v is None else v) for k, v in (raw or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {short(item)}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise UserError(f"--set {short(item)}: expected a key of the form section.key")
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise UserError(f"config section {label(parts[0])}: expected a mapping, got {short(section)}")
        section[parts[1]] = value
    return raw
