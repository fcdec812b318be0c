"""PATCH bodies: JSON merge patch, strategic merge patch (as a merge patch) and JSON patch.

RFC 6902 JSON patch is the ``jsonpatch`` library; its errors are answered as the API server
answers a patch that does not apply (422, the test op's own wording).  RFC 7386 merge patch
stays hand-written: it is eight lines, and ``jsonpatch`` has none.
Strategic merge patch would need every type's Go struct tags (``patchMergeKey``) to merge
lists by key; the simulator applies it as a merge patch (see the package notes).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from watchdogd.sim.kube.errors import ApiError

__all__ = ["JSON_PATCH", "MERGE_PATCHES", "json_patch", "merge_patch", "patched"]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic-merge-patch, see module notes)."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test (a new document)."""
    for each in ops:
        if not isinstance(each, dict):
            continue  # jsonpatch rejects it below, with the generic answer
        kind = each.get("op")
        if kind is not None and kind not in _OPS:
            raise ApiError(422, f"Unexpected kind: {kind}")
        for member in ("path", "from"):
            ptr = each.get(member)
            if isinstance(ptr, str) and ptr and not ptr.startswith("/"):
                raise ApiError(422, f"invalid JSON pointer {ptr!r}")
    doc = copy.deepcopy(doc)
    op: Any = None
    try:
        for op in ops:  # one at a time, so that a failed test names its path
            doc = jsonpatch.apply_patch(doc, [op], in_place=True)
    except jsonpatch.JsonPatchTestFailed:
        raise ApiError(422, f"testing value {op['path']} failed") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException,
            KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"the server rejected our request due to an error in our request: "
                            f"jsonpatch: {exc!r}") from None
    return doc


def patched(content_type: str, current: Any, patch: Any) -> Any:
    """``current`` with ``patch`` applied as its media type says; 400/415 as the real server."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise ApiError(400, "json patch must be a list of operations")
        return json_patch(current, patch)
    if content_type in MERGE_PATCHES:
        if not isinstance(patch, dict):
            raise ApiError(400, "patch must be a JSON object")
        return merge_patch(current, patch)
    raise ApiError(415, "the body of the request was in an unknown format - accepted "
                        "media types include: application/json-patch+json, "
                        "application/merge-patch+json, "
                        "application/strategic-merge-patch+json")
