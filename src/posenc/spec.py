"""Component configs: small frozen dataclasses that check themselves and build their module.

Every part of a model -- an encoding, an attention variant, a mask, a block, the embedding and
the head -- has a config (``Module.Config``, the pattern of torchtitan). A config checks its own
fields when it is made, checks what depends on the model's sizes in ``check(dims)``, and
round-trips through JSON exactly with ``to_dict()`` / ``from_dict()``. A bad value raises
``ValueError`` (``TypeError`` for a wrong type) naming the config, the field and the value -- never
an ``assert``, which ``python -O`` strips. Each check is written once, in the config that owns the
field; the module's constructor makes its config, so a module built by hand is checked by the
same code.

``@spec`` makes a class such a config: a frozen dataclass that hashes by value (mapping fields
are stored read-only, and included in the hash).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def plain(value: Any) -> Any:
    """``value`` as JSON data: configs as their dicts, tuples as lists, mappings as dicts."""
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


class FrozenMapping(Mapping[str, Any]):
    """A read-only copy of a mapping that, unlike ``types.MappingProxyType``, copies and pickles, so
    that a model holding a config with one (a RoPE ``scaling``) can be deep-copied and saved whole."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return FrozenMapping, (self._items,)


def frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A read-only copy of a mapping field (None stays None)."""
    return None if value is None else FrozenMapping(value)


class Spec:
    """Base of every component config (see the module docstring). Subclasses use ``@spec``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``from_dict`` of it gives an equal config."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
        """The config of ``to_dict()`` output: unknown keys are refused by name, lists become tuples."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__qualname__}.from_dict expects a mapping, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__qualname__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _hash(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def spec(cls: type[T]) -> type[T]:
    """Make ``cls`` (a :class:`Spec` subclass) a frozen, value-hashed dataclass."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__hash__ = Spec._hash  # type: ignore[method-assign]  # mapping fields hash by their contents
    return cls


def set_field(config: Any, name: str, value: Any) -> None:
    """Set a derived field of a frozen config in its ``__post_init__``."""
    object.__setattr__(config, name, value)


# -- checks: each raises with the owner, the field and the value ------------------------------------


def check_int(owner: str, name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    """An int >= ``minimum`` (None too when ``optional``); bools are not ints here."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


def check_bool(owner: str, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be a bool, got {value!r}")


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    optional: bool = False,
) -> None:
    """A finite real number in the interval given by ``low``/``high`` (open ends by default)."""
    if value is None and optional:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise ValueError(f"{owner}.{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...] | Mapping[Any, Any]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {sorted(choices)}, got {value!r}")


def registered_config(value: Any, base: type, lookup: Any, kind: str, **options: Any) -> Any:
    """A config of a registry (encodings, attention variants) from a registered name (with
    ``options``), a config (``options`` replace its fields) or its ``to_dict()`` (with its ``name``).
    ``lookup(name)`` returns the registered class, whose ``Config`` is made."""
    if isinstance(value, base):
        return value.replace(**options) if options else value
    if isinstance(value, Mapping):
        d = dict(value)
        if "name" not in d:
            raise ValueError(f"an {kind} dict needs its 'name', got {dict(value)!r}")
        return lookup(d.pop("name")).Config.from_dict(d | options)
    if not isinstance(value, str):
        raise TypeError(f"an {kind} is a registered name, a config or a dict, got {value!r}")
    return lookup(value).Config(**options)
