"""attrs validators shared by the config classes; messages start with the field's dotted path."""

from __future__ import annotations

from typing import Any, Callable


def mapping_of(name: str, kind: type, *, nullable: bool = False) -> Callable[..., None]:
    """Validator of a ``{str: kind or None}`` field named ``name`` (the field itself may be ``None`` if ``nullable``)."""
    label = kind.__name__
    article = "an" if label[0] in "AEIOU" else "a"

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, dict):
            raise TypeError(f"{name}: expected a mapping of name to {label}{' (or null)' if nullable else ''}, "
                            f"got {value!r}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{name}: keys must be strings, got {key!r}")
            if item is not None and not isinstance(item, kind):
                raise TypeError(f"{name}.{key}: expected {article} {label} or None, got {item!r}")

    return check
