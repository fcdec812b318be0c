"""Label and field selectors: parsing the API's grammar and matching objects against it.

Hand-written: no maintained Python library parses Kubernetes selectors, and the semantics
that matter (``!=`` matching objects without the key, per-type field labels, Go zero values
for absent fields, the real 400 wording) are the point of the simulation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from watchdogd.sim.kube.errors import ApiError
from watchdogd.sim.kube.resources import Obj, ResourceType

__all__ = ["FieldRequirement", "LabelRequirement", "Query", "parse_field_selector",
           "parse_label_selector", "valid_label_key"]

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
#: Field labels whose value is not simply the dotted path into the object.
_FIELD_PATHS: dict[str, tuple[str, ...]] = {"source": ("source", "component")}
#: Values the real field-label functions report when the field is absent (Go zero values).
_FIELD_DEFAULTS: dict[str, str] = {
    "spec.unschedulable": "false", "spec.hostNetwork": "false", "status.successful": "0",
}


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector, matched with the real semantics.

    ``!=`` and ``notin`` also match objects that lack the key, exactly like the API server,
    which is a classic surprise worth reproducing.
    """

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfies this requirement."""
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == ">" else number < limit


_LS_TOKEN = re.compile(r"\s*(?:(?P<op>!=|==|=|!|\(|\)|,|>|<)|(?P<word>[^\s!=(),<>]+))\s*")


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse the ``labelSelector`` grammar: ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``,
    ``!key``, ``>``/``<`` and ``,`` for AND.  Bad syntax is a 400 like the real server's."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _LS_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ApiError(400, f"unable to parse requirement: invalid label selector {text!r}")
        tokens.append(("op", m.group("op")) if m.group("op") else ("word", m.group("word")))
        pos = m.end()
    reqs: list[LabelRequirement] = []
    i = 0

    def bad(why: str) -> ApiError:
        return ApiError(400, f"unable to parse requirement: {why} in label selector {text!r}")

    def peek() -> tuple[str, str] | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        negate = tokens[i] == ("op", "!")
        if negate:
            i += 1
        tok = peek()
        if tok is None or tok[0] != "word":
            raise bad("found no key")
        key = tok[1]
        if not valid_label_key(key):
            raise bad(f"invalid label key {key!r}")
        i += 1
        nxt = peek()
        if negate:
            reqs.append(LabelRequirement(key, "!"))
        elif nxt is None or nxt == ("op", ","):
            reqs.append(LabelRequirement(key, "exists"))
        elif nxt[0] == "op" and nxt[1] in ("=", "==", "!="):
            i += 1
            val = peek()
            value = ""
            if val is not None and val[0] == "word":
                value = val[1]
                i += 1
            reqs.append(LabelRequirement(key, "!=" if nxt[1] == "!=" else "=", (value,)))
        elif nxt[0] == "op" and nxt[1] in (">", "<"):
            i += 1
            val = peek()
            if val is None or val[0] != "word" or not re.fullmatch(r"-?\d+", val[1]):
                raise bad("expected an integer")
            i += 1
            reqs.append(LabelRequirement(key, nxt[1], (val[1],)))
        elif nxt in (("word", "in"), ("word", "notin")):
            i += 1
            if peek() != ("op", "("):
                raise bad("expected '('")
            i += 1
            values: list[str] = []
            while True:
                val = peek()
                if val is None:
                    raise bad("expected ')'")
                if val[0] == "word":
                    values.append(val[1])
                    i += 1
                    val = peek()
                if val == ("op", ","):
                    i += 1
                    continue
                if val == ("op", ")"):
                    i += 1
                    break
                raise bad("expected ',' or ')'")
            reqs.append(LabelRequirement(key, nxt[1], tuple(values)))
        else:
            raise bad(f"unexpected {nxt[1]!r}")
        tok = peek()
        if tok is None:
            break
        if tok != ("op", ","):
            raise bad(f"expected ',' but found {tok[1]!r}")
        i += 1
    return reqs


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


@dataclass(frozen=True)
class FieldRequirement:
    """One ``field=value`` / ``field!=value`` term of a field selector."""

    label: str
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        """Compare the object's field as the real field-label functions stringify it."""
        cur: Any = obj
        for part in self.path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None:
            text = _FIELD_DEFAULTS.get(self.label, "")
        elif isinstance(cur, bool):
            text = "true" if cur else "false"
        else:
            text = str(cur)
        return (text == self.value) == self.equal


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str, rt: ResourceType) -> list[FieldRequirement]:
    """Parse a ``fieldSelector`` and reject labels the resource does not index, like the real
    server does with ``field label not supported: X`` (a 400)."""
    supported = {"metadata.name", *rt.field_labels}
    if rt.namespaced:
        supported.add("metadata.namespace")
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        m = re.match(r"^((?:[^\\=!]|\\.)*)(!=|==|=)(.*)$", term)
        if not m:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{term}'")
        label, op, value = _unescape(m.group(1)).strip(), m.group(2), _unescape(m.group(3))
        if label not in supported:
            raise ApiError(400, f"field label not supported: {label}")
        path = _FIELD_PATHS.get(label, tuple(label.split(".")))
        reqs.append(FieldRequirement(label, path, op != "!=", value))
    return reqs


@dataclass(frozen=True)
class Query:
    """Which objects of one resource a list, watch or deletecollection is about."""

    namespace: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @property
    def has_selectors(self) -> bool:
        """The real server omits remainingItemCount when a selector filters the list."""
        return bool(self.labels or self.fields)

    def matches(self, obj: Obj) -> bool:
        """Namespace, label and field terms all hold (AND)."""
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels:
            labels = meta.get("labels") or {}
            if not all(r.matches(labels) for r in self.labels):
                return False
        return all(r.matches(obj) for r in self.fields)
