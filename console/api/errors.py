# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""One error shape for the whole API, the gateway's: `{"error": {message, type, param, code}}`.

Validation errors also carry `details` ({field: [messages]}) so a form can show them all.
Database refusals caused by the input (a duplicate name, a row still in use, a value out of
range) are the client's mistake, so they are 400 or 409 here, never a 500. Errors Django
answers before or around a view (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a bad Host, an
unknown URL, a crash) have the same shape under /api/: config/urls.py names the handlers.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, OperationalError
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class Conflict(exceptions.APIException):
    """The request is well-formed but the object's state forbids it (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object's current state does not allow this."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "body_too_large"


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A service this needs is unavailable; retry shortly."
    default_code = "unavailable"


def error_body(
    status_code: int, message: str, *, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status_code, "api_error"),
            "param": param,
            "code": code,
        }
    }


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    exc = _as_api_exception(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    assert isinstance(exc, exceptions.APIException)
    response.data = _body(response.status_code, exc)
    return response


def _as_api_exception(exc: Exception) -> Exception:
    converted: Exception = exc
    if isinstance(exc, DjangoValidationError):
        converted = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, ProtectedError | RestrictedError):
        converted = Conflict("Other objects still refer to this one; it cannot be deleted.")
    elif isinstance(exc, IntegrityError):
        converted = Conflict("This conflicts with an existing object (a duplicate, or one in use).")
    elif isinstance(exc, DataError):
        converted = exceptions.ValidationError("A value is out of the range the database accepts.")
    elif isinstance(exc, Http404):
        converted = exceptions.NotFound()
    elif isinstance(exc, SuspiciousOperation):
        converted = _suspicious(exc)
    elif isinstance(exc, OperationalError):
        # The database is unreachable or every pooled connection is busy: retry later.
        converted = Unavailable()
    return converted


def _suspicious(exc: SuspiciousOperation) -> exceptions.APIException:
    """Django's refusals of what a request carries: too big, too many fields, malformed."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ParseError("Too many query or form fields.", code="too_many_fields")
    return exceptions.ParseError("The request is malformed.", code="bad_request")


def _body(status_code: int, exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        details = _flatten(exc.detail)
        param, messages = next(iter(details.items()), (None, ["Invalid input."]))
        message = messages[0] if param in (None, "non_field_errors") else f"{param}: {messages[0]}"
        code = _flatten(exc.get_codes()).get(param or "", ["invalid"])[0]
        body = error_body(400, message, code=code, param=_param(param))
        body["error"]["details"] = details
        return body
    codes = exc.get_codes()
    return error_body(
        status_code, _text(exc.detail), code=codes if isinstance(codes, str) else None
    )


def _param(name: str | None) -> str | None:
    return None if name == "non_field_errors" else name


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """{"field": [...]}, nested fields joined by dots ("limits.tokens_per_day", "prices.0.tier")."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        flat = {}
        for index, item in enumerate(detail):
            flat.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    items = detail if isinstance(detail, list) else [detail]
    return {prefix or "non_field_errors": [str(item) for item in items]} if items else {}


def _text(detail: Any) -> str:
    if isinstance(detail, list):
        return " ".join(str(item) for item in detail)
    if isinstance(detail, dict):
        return " ".join(f"{key}: {_text(value)}" for key, value in detail.items())
    return str(detail)


@csrf_exempt  # whatever the method, the answer is 404 (not the CSRF failure page)
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown URLs under /api/ answer in the API's format, not Django's HTML page."""
    message = f"Unknown URL: {request.path}"
    return JsonResponse(error_body(404, message, code="unknown_url"), status=404)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: Django's refusals of a request (SuspiciousOperation) outside DRF."""
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    api_exception = _suspicious(
        exception if isinstance(exception, SuspiciousOperation) else SuspiciousOperation()
    )
    return _json(api_exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler403."""
    if not _is_api(request):
        return defaults.permission_denied(request, exception)
    return _json(exceptions.PermissionDenied())


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: /api itself and anything Django answers 404 before reaching the API."""
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return not_found(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a crash is still a 500 (the SDKs retry it), but in the API's shape."""
    if not _is_api(request):
        return defaults.server_error(request)
    body = error_body(500, "The server failed to answer; retry shortly.", code="server_error")
    return JsonResponse(body, status=500)


def _is_api(request: HttpRequest) -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def _json(exc: exceptions.APIException) -> JsonResponse:
    return JsonResponse(_body(exc.status_code, exc), status=exc.status_code)
