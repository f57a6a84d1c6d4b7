"""One error shape for the whole HTTP API, with the stable codes the WebSocket protocol uses.

    {"error": {"code": "not_found", "message": "No such conversation or message."}}
    {"error": {"code": "invalid_request", "message": "'temperature' must be between 0 and 2.", "field": "temperature"}}

The OpenAI-compatible endpoint adds OpenAI's `type` and `param` to the same object, which is what its SDKs read.
"""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response

from conversations.errors import ChatError

log = logging.getLogger(__name__)

STATUS_BY_CODE = {
    "invalid_request": 400,
    "invalid_json": 400,
    "content_too_long": 400,
    "model_not_allowed": 400,
    "not_authenticated": 401,
    "authentication_failed": 401,
    "permission_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    "unsupported_media_type": 415,
    "conversation_busy": 409,
    "invalid_state": 409,
    "too_many_generations": 429,
    "quota_exceeded": 429,
    "too_many_requests": 429,
    "context_length_exceeded": 400,
    "idempotency_key_reused": 422,
    "request_too_large": 413,
    "internal_error": 500,
    "unavailable": 503,
}
# Codes a validation error may carry as they are; any other validation problem is `invalid_request`.
_VALIDATION_CODES = {"invalid_request", "content_too_long", "model_not_allowed"}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "api_error",
}


class ApiError(Exception):
    """An error with an explicit HTTP status, for codes whose status depends on the endpoint (upstream failures)."""

    def __init__(self, code: str, message: str, *, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def error_body(code: str, message: str, *, field: str | None = None, status: int = 400, openai: bool = False) -> Any:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if openai:
        error["type"] = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        error["param"] = field
    return {"error": error}


def _first_error(detail: Any, path: str = "") -> tuple[str | None, exceptions.ErrorDetail | str]:
    """The first problem in a DRF validation error, and the dotted path of the field it concerns."""
    if isinstance(detail, dict):
        name, inner = next(iter(detail.items()))
        field = None if name == "non_field_errors" else f"{path}.{name}" if path else str(name)
        return _first_error(inner, field or path)
    if isinstance(detail, list):
        for index, inner in enumerate(detail):
            if not isinstance(inner, dict | list):
                return path or None, inner
            if inner:  # a list of objects (many=True): the errors of item `index`
                return _first_error(inner, f"{path}[{index}]")
    return path or None, str(detail)


def describe(exc: Exception) -> tuple[str, str, str | None, int]:
    """(code, message, field, status) for an exception a view raised."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, None, exc.status
    if isinstance(exc, ChatError):
        return exc.code, exc.message, exc.field, STATUS_BY_CODE.get(exc.code, 400)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return "request_too_large", f"The request body is larger than {limit} bytes.", None, 413
    if isinstance(exc, Http404):
        return "not_found", "No such conversation or message.", None, 404
    if isinstance(exc, DjangoPermissionDenied):
        return "permission_denied", "You do not have permission to do that.", None, 403
    if isinstance(exc, exceptions.ValidationError):
        field, problem = _first_error(exc.detail)
        code = getattr(problem, "code", None)
        return (code if code in _VALIDATION_CODES else "invalid_request"), str(problem), field, 400
    if isinstance(exc, exceptions.ParseError):
        return "invalid_json", "The request body is not valid JSON.", None, 400
    if isinstance(exc, exceptions.APIException):
        return str(exc.default_code), str(exc.detail), None, exc.status_code
    log.error("request failed", exc_info=exc)
    return "internal_error", "The server failed to handle that request.", None, 500


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error of every API view, in the one shape."""
    code, message, field, status = describe(exc)
    openai = bool(getattr(context.get("view"), "openai_errors", False))
    response = Response(error_body(code, message, field=field, status=status, openai=openai), status=status)
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        response["WWW-Authenticate"] = auth_header
    if isinstance(exc, ChatError):
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        for kind, (limit, remaining) in exc.limits.items():
            # OpenAI's names: the SDKs and client libraries read these to pace themselves.
            response[f"x-ratelimit-limit-{kind}"] = str(limit)
            response[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            if exc.retry_after is not None:
                response[f"x-ratelimit-reset-{kind}"] = f"{exc.retry_after}s"
    return response
