"""Registry names: parse ``team/embed@2`` / ``embed@prod``, the caller's identity and namespace, close matches."""

from __future__ import annotations

import difflib
import getpass
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tether.errors import ConfigError, NotFound

__all__ = [
    "Ref",
    "current_namespace",
    "current_user",
    "not_found",
    "parse_ref",
    "suggest",
    "validate_tag",
]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
#: selectors that are not tags
RESERVED_TAGS = frozenset({"latest"})


@dataclass(frozen=True)
class Ref:
    """A parsed reference: namespace, name, and a selector (version number, tag, or None for latest)."""

    namespace: str
    name: str
    version: int | None = None
    tag: str | None = None

    @property
    def full(self) -> str:
        """'namespace/name' without selector."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        sel = f"@{self.version}" if self.version is not None else f"@{self.tag}" if self.tag else ""
        return f"{self.full}{sel}"


def current_user() -> str:
    """Who is acting: ``TETHER_USER``, else the OS user."""
    user = os.environ.get("TETHER_USER") or getpass.getuser()
    return user


def current_namespace() -> str:
    """Where bare names live: ``TETHER_NAMESPACE``, else the user's own namespace."""
    return os.environ.get("TETHER_NAMESPACE") or current_user()


def _segment(value: str, what: str, ref: str) -> str:
    if not _SEGMENT.match(value):
        raise ConfigError(
            f"invalid {what} {value!r} in {ref!r}",
            hint="use letters, digits, '_', '.', '-' (start with a letter or digit); e.g. 'team/embed@2'",
            details={"field": what, "value": value},
        )
    return value


def validate_tag(tag: str) -> str:
    """A tag starts with a letter (so it never looks like a version number) and is not 'latest'."""
    if not isinstance(tag, str) or not _TAG.match(tag) or tag in RESERVED_TAGS:
        raise ConfigError(
            f"invalid tag {tag!r}",
            hint="a tag starts with a letter, uses letters, digits, '_', '.', '-', and is not 'latest'",
            details={"field": "tag", "value": tag},
        )
    return tag


def parse_ref(ref: str, *, namespace: str | None = None, allow_selector: bool = True) -> Ref:
    """``"embed"`` → current namespace, latest; ``"team/embed@2"`` → version 2; ``"embed@prod"`` → tag prod."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(
            f"invalid name {ref!r}", hint="e.g. 'embed', 'team/embed', 'embed@2'", details={"field": "name"}
        )
    ref = ref.strip()
    base, at, selector = ref.partition("@")
    if at and not allow_selector:
        raise ConfigError(
            f"{ref!r} names a version; this operation takes a plain name",
            hint=f"use {base!r}",
            details={"field": "name", "value": ref},
        )
    parts = base.split("/")
    if len(parts) == 1:
        ns, name = namespace or current_namespace(), parts[0]
    elif len(parts) == 2:
        ns, name = parts
    else:
        raise ConfigError(
            f"invalid name {ref!r}: at most one '/'", hint="e.g. 'team/embed'", details={"field": "name"}
        )
    _segment(ns, "namespace", ref)
    _segment(name, "name", ref)
    if not at or selector == "latest":
        return Ref(ns, name)
    if selector.isdigit():
        version = int(selector)
        if version < 1:
            raise ConfigError(
                f"invalid version in {ref!r}: versions start at 1", details={"field": "version"}
            )
        return Ref(ns, name, version=version)
    return Ref(ns, name, tag=validate_tag(selector))


def suggest(wanted: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Close matches for a mistyped name, compared both as full names and by the part after the namespace."""
    pool = sorted(set(candidates))
    short = {c.split("/", 1)[-1]: c for c in pool}
    hits = difflib.get_close_matches(wanted, pool, n=n, cutoff=0.6)
    for s in difflib.get_close_matches(wanted.split("/", 1)[-1], list(short), n=n, cutoff=0.6):
        if short[s] not in hits:
            hits.append(short[s])
    return hits[:n]


def not_found(what: str, wanted: str, candidates: Iterable[str]) -> NotFound:
    """A NotFound that lists close matches (in the message, the hint, and ``details['suggestions']``)."""
    close = suggest(wanted, candidates)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `tether registry ls`"
    listed = f" (close matches: {', '.join(close)})" if close else ""
    return NotFound(
        f"no {what} {wanted!r}{listed}", hint=hint, details={"name": wanted, "suggestions": close}
    )
