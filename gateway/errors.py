"""OpenAI-format errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

The official SDKs retry 408, 409, 429 and 5xx, so a client's mistake must never be a 5xx, and
an error the client cannot fix by retrying carries `x-should-retry: false`.
"""

import orjson


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> bytes:
        return orjson.dumps({"error": self.payload()})

    def payload(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, type="invalid_request_error", param=param, code=code)


def invalid_api_key(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        type="invalid_request_error",
        code="invalid_api_key",
        headers=((b"x-should-retry", b"false"),),
    )


def account_inactive() -> ApiError:
    return ApiError(
        403,
        "This account is suspended. Contact your administrator.",
        type="invalid_request_error",
        code="account_inactive",
        headers=((b"x-should-retry", b"false"),),
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def not_found(path: str) -> ApiError:
    return ApiError(404, f"Unknown URL: {path}", type="invalid_request_error", code="unknown_url")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, f"Method {method} is not allowed here.", type="invalid_request_error")


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"Request body is larger than the limit of {limit} bytes.",
        type="invalid_request_error",
        code="request_too_large",
    )


def unavailable(message: str, *, code: str, retry_after: str = "1") -> ApiError:
    """503: something the gateway needs is away for now; the SDK retries after `retry_after`."""
    return ApiError(
        503,
        message,
        type="server_error",
        code=code,
        headers=((b"retry-after", retry_after.encode()),),
    )


def no_backend(model: str) -> ApiError:
    return unavailable(
        f"No healthy backend is serving `{model}` right now. Please retry shortly.",
        code="backend_unavailable",
    )


def backend_failed(status: int, message: str) -> ApiError:
    """A backend failure after every attempt: 502 (bad answer), 503 (busy) or 504 (timeout)."""
    return ApiError(status, message, type="server_error", code="backend_error")
