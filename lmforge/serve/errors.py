"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client caused (or must retry); becomes a JSON response with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or asks for something impossible."""
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def busy(capacity: int) -> APIError:
    return APIError(429, f"the server is generating for its maximum of {capacity} concurrent sequences; retry shortly",
                    type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})


def server_error(message: str = "internal server error") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


_STATUS_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed"),
                 413: ("invalid_request_error", "request_too_large")}


def from_status(status: int, message: str) -> APIError:
    """Routing errors (unknown path, wrong method) in the same shape."""
    kind, code = _STATUS_TYPES.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    return APIError(status, message, type=kind, code=code)
