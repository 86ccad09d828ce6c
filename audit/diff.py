"""What an audit entry changed, as people read it: the fields whose values differ, old and new.

Snapshots nest (an account's limits, a price book's prices): nested fields are named by their
path, e.g. `limits.requests_per_minute` or `prices[0].output_per_million`.
"""

import json
from dataclasses import dataclass
from typing import Any

# Shown where a field has no value: before a creation, after a deletion, or null.
NONE = "—"


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str
    after: str


def changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[FieldChange]:
    """The fields whose values differ between two snapshots, in the snapshots' order."""
    old, new = _flatten(before or {}), _flatten(after or {})
    fields = [*old, *(name for name in new if name not in old)]
    return [
        FieldChange(name, value_text(old.get(name)), value_text(new.get(name)))
        for name in fields
        if old.get(name) != new.get(name)
    ]


def value_text(value: Any) -> str:
    """A snapshot's value as text: null as a dash, lists of plain values comma-separated."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return ", ".join(str(item) for item in value) if value else "(none)"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and (value or not path):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return flat
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{path}[{index}]"))
        return flat
    return {path: value}
