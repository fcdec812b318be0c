"""Errors as the API server answers them: ``Status`` objects with the real reasons and wording."""

from __future__ import annotations

from watchdogd.sim.kube.resources import Obj, ResourceType

__all__ = ["ApiError", "conflict", "details", "invalid", "not_found"]

_REASONS: dict[int, str] = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid",
    429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class ApiError(Exception):
    """An error the simulated API answers with a ``Status`` body, as the real server does."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: Obj | None = None, list_meta: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details or {}
        self.list_meta = list_meta or {}

    def status(self) -> Obj:
        """The wire form; ``details`` is always present (possibly empty) so callers can index it."""
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": dict(self.list_meta),
            "status": "Failure", "message": self.message, "reason": self.reason,
            "details": self.details, "code": self.code,
        }


def details(rt: ResourceType, name: str | None = None) -> Obj:
    d: Obj = {}
    if name:
        d["name"] = name
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified} "{name}" not found', details=details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
                    details=details(rt, name))


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    if len(causes) > 1:
        text = "[" + text + "]"
    return ApiError(
        422, f'{rt.kind} "{name}" is invalid: {text}',
        details={"name": name, "group": rt.group, "kind": rt.kind,
                 "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                            for f, m in causes]},
    )
