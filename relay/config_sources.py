"""How a typed configuration (a tree of dataclasses) is built from its sources: TOML, the environment and
flags, each a nested mapping applied over the one before. Every bad key or value is collected as
'key: problem', never just the first, so ``relay check-config`` can name them all. Generic: the schema and
its rules are relay/config.py's; this module knows only dataclasses, their type hints and text."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "apply", "env_tree", "read_toml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more bad keys or values; ``errors`` lists each as 'key: problem'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))
        self.errors = errors


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML ({e})"]) from None


def env_tree(environ: Mapping[str, str], prefix: str, skip: Callable[[str], bool]) -> dict:
    """The variables named ``<prefix><KEY>`` as a nested mapping (``__`` separates the levels:
    ``RELAY_NAMESPACES__CHAT__HISTORY_SIZE`` -> namespaces.chat.history_size), but those ``skip`` names."""
    tree: dict = {}
    for name, value in environ.items():
        if not name.startswith(prefix) or skip(name):
            continue
        path = name[len(prefix):].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def apply(base: T, data: Mapping[str, Any], errs: list[str], *, from_text: bool = False, prefix: str = "",
          renamed: Mapping[type, Mapping[str, str]] | None = None) -> T:
    """``base`` (a dataclass instance) with the values of ``data`` on top: nested tables merge into their
    dataclass fields (a dict of dataclasses merges per key), other values replace. ``from_text``: values are
    strings to parse (the environment). ``renamed``: per dataclass, keys of earlier versions -> what to write
    now. Problems go to ``errs``."""
    cls = type(base)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            hint = (renamed or {}).get(cls, {}).get(k)
            errs.append(f"{key}: unknown key" + (f"; write {hint}" if hint else ""))
            continue
        changes[k] = _convert(v, hints[k], key, errs, from_text, getattr(base, k), renamed)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def _convert(value: Any, tp: Any, key: str, errs: list[str], from_text: bool, current: Any,
             renamed: Mapping[type, Mapping[str, str]] | None) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            errs.append(f"{key}: expected a table")
            return current
        return apply(current if current is not None else tp(), value, errs, from_text=from_text, prefix=key,
                     renamed=renamed)
    if origin is list:
        (it,) = get_args(tp)
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            errs.append(f"{key}: expected a list")
            return None
        return [_convert(v, it, f"{key}[{i}]", errs, from_text, None, renamed) for i, v in enumerate(value)]
    if origin is dict:
        _, vt = get_args(tp)
        if not isinstance(value, Mapping):
            errs.append(f"{key}: expected a table")
            return current
        merge = dataclasses.is_dataclass(vt)  # a table of tables (namespaces) merges per key
        out = dict(current or {}) if merge else {}
        for k, v in value.items():
            out[k] = _convert(v, vt, f"{key}.{k}", errs, from_text, out.get(k), renamed)
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in ("1", "0", "true", "false", "yes", "no"):
            return value.lower() in ("1", "true", "yes")
        errs.append(f"{key}: expected true or false, got {value!r}")
        return None
    if tp is int or tp is float:
        numeric = (int,) if tp is int else (int, float)
        if isinstance(value, numeric) and not isinstance(value, bool):
            return tp(value)
        if from_text and isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        errs.append(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errs.append(f"{key}: expected a string, got {value!r}")
        return None
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover
