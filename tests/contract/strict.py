"""Strict validation of JSON values against the official SDKs' TypedDict param types.

The `openai` Python SDK types request bodies and client events as ``TypedDict``s
(e.g. ``openai.types.live.session_accept_params.SessionAcceptParams``). Two oracles are run on
every value:

1. ``pydantic.TypeAdapter(T).validate_python`` (the SDK's own pydantic): required keys, literal
   (enum) values, primitive types. Pydantic ignores keys a ``TypedDict`` does not declare and
   validates ``Iterable[...]`` members lazily, so it is not enough on its own.
2. :func:`check`, a recursive walk of the type annotations that reports every problem with its
   JSON path: a missing ``Required`` key, a key the type does not declare (at any depth), a value
   outside a ``Literal``, a wrong JSON type, and for unions the errors of the closest member
   (for unions discriminated by ``type``, the member whose ``type`` literal matches).

A value passes only when both agree it is valid.
"""

from __future__ import annotations

import collections.abc
import functools
import typing

import pydantic
import typing_extensions

_TYPEDDICT_META = (type(typing_extensions.TypedDict("_X", {})), type(typing.TypedDict("_Y", {})))


def is_typeddict(tp) -> bool:
    return isinstance(tp, type) and (
        typing_extensions.is_typeddict(tp) or typing.is_typeddict(tp) or isinstance(tp, _TYPEDDICT_META)
    )


@functools.lru_cache(maxsize=None)
def hints(td) -> dict:
    return typing_extensions.get_type_hints(td, include_extras=True)


def _wrapper(tp):
    origin = typing_extensions.get_origin(tp)
    for name in ("Required", "NotRequired"):
        if origin is getattr(typing_extensions, name) or origin is getattr(typing, name, object()):
            return name
    return None


@functools.lru_cache(maxsize=None)
def required_keys(td) -> frozenset:
    """Keys marked ``Required`` (or not ``NotRequired`` in a total TypedDict). Computed from the
    resolved annotations: with postponed annotations ``__required_keys__`` misses ``Required``."""
    total = getattr(td, "__total__", True)
    out = set()
    for key, tp in hints(td).items():
        w = _wrapper(tp)
        if w == "Required" or (total and w != "NotRequired"):
            out.add(key)
    return frozenset(out)


def _strip(tp):
    """Removes Required/NotRequired/Annotated wrappers."""
    while True:
        origin = typing_extensions.get_origin(tp)
        if origin in (typing_extensions.Required, typing_extensions.NotRequired, typing.Annotated):
            tp = typing_extensions.get_args(tp)[0]
            continue
        if origin is getattr(typing, "Required", None) or origin is getattr(typing, "NotRequired", None):
            tp = typing_extensions.get_args(tp)[0]
            continue
        return tp


def _jtype(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _literal_values(tp) -> list:
    tp = _strip(tp)
    if typing_extensions.get_origin(tp) is typing_extensions.Literal or typing_extensions.get_origin(tp) is typing.Literal:
        return list(typing_extensions.get_args(tp))
    return []


def _is_union(tp) -> bool:
    import types as _types

    origin = typing_extensions.get_origin(tp)
    return origin is typing.Union or origin is getattr(_types, "UnionType", None)


def check(value, tp, path: str = "$") -> list[str]:
    """Every problem of ``value`` against the annotation ``tp``, as ``"path: message"``."""
    tp = _strip(tp)
    if tp is typing.Any or tp is object:
        return []
    if tp is type(None) or tp is None:
        return [] if value is None else [f"{path}: expected null, got {_jtype(value)}"]
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if origin in (typing.Literal, typing_extensions.Literal):
        return [] if value in args and type(value) in {type(a) for a in args} else [
            f"{path}: {value!r} is not one of {list(args)!r}"
        ]
    if _is_union(tp):
        return _check_union(value, args, path)
    if is_typeddict(tp):
        return _check_typeddict(value, tp, path)
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected string, got {_jtype(value)}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected boolean, got {_jtype(value)}"]
    if tp is int:
        return (
            []
            if isinstance(value, int) and not isinstance(value, bool)
            else [f"{path}: expected integer, got {_jtype(value)}"]
        )
    if tp is float:
        return (
            []
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else [f"{path}: expected number, got {_jtype(value)}"]
        )
    if origin in (dict, typing.Dict, collections.abc.Mapping) or tp in (dict, typing.Dict):
        if not isinstance(value, dict):
            return [f"{path}: expected object, got {_jtype(value)}"]
        vt = args[1] if len(args) == 2 else object
        out = []
        for k, v in value.items():
            out += check(v, vt, f"{path}.{k}")
        return out
    name = getattr(origin, "__name__", "") or getattr(tp, "__name__", "")
    if origin in (list, typing.List, collections.abc.Iterable, collections.abc.Sequence) or name in (
        "SequenceNotStr",
        "Iterable",
        "Sequence",
        "List",
    ):
        if not isinstance(value, list):
            return [f"{path}: expected array, got {_jtype(value)}"]
        it = args[0] if args else object
        out = []
        for i, v in enumerate(value):
            out += check(v, it, f"{path}[{i}]")
        return out
    return [f"{path}: the checker does not know the annotation {tp!r}"]


def _check_typeddict(value, td, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected object ({td.__name__}), got {_jtype(value)}"]
    h = hints(td)
    out = []
    for key in sorted(required_keys(td)):
        if key not in value:
            out.append(f"{path}: missing required key {key!r} ({td.__name__})")
    for key, v in value.items():
        if key not in h:
            out.append(f"{path}: key {key!r} is not in {td.__module__}.{td.__name__}")
            continue
        out += check(v, h[key], f"{path}.{key}")
    return out


def _check_union(value, members, path: str) -> list[str]:
    results = []
    for m in members:
        errs = check(value, m, path)
        if not errs:
            return []
        results.append((m, errs))
    # Discriminated by `type`: report against the member whose `type` literal matches.
    if isinstance(value, dict) and "type" in value:
        for m, errs in results:
            mm = _strip(m)
            if is_typeddict(mm) and "type" in hints(mm) and value["type"] in _literal_values(hints(mm)["type"]):
                return errs
    best = min(results, key=lambda r: len(r[1]))
    return best[1] + [f"{path}: matches no member of the union (closest: {getattr(_strip(best[0]), '__name__', best[0])})"]


@functools.lru_cache(maxsize=None)
def _adapter(tp) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(tp)


def _force(obj):
    """Consumes lazily validated iterables so pydantic reports their errors."""
    if isinstance(obj, dict):
        return {k: _force(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_force(v) for v in obj]
    if isinstance(obj, collections.abc.Iterator) or type(obj).__name__ == "ValidatorIterator":
        return [_force(v) for v in obj]
    return obj


def pydantic_errors(value, tp) -> list[str]:
    """Errors of ``TypeAdapter(tp).validate_python(value)`` (lazy iterables consumed)."""
    try:
        _force(_adapter(tp).validate_python(value))
    except pydantic.ValidationError as e:
        return [f"pydantic: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    return []


def validate(value, tp) -> list[str]:
    """Both oracles; an empty list means valid."""
    return check(value, tp) + pydantic_errors(value, tp)


def by_type(union) -> dict:
    """``{"type literal": TypedDict}`` for a union of event param types."""
    out = {}
    for m in typing_extensions.get_args(_strip(union)):
        m = _strip(m)
        if is_typeddict(m) and "type" in hints(m):
            for lit in _literal_values(hints(m)["type"]):
                out[lit] = m
    return out
