"""ASGI entry: the gateway's hot path for inference and health, Django for everything else."""

import os
import re
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_app = get_asgi_application()
if settings.LOCAL:
    # The console's CSS and scripts, straight from the apps; in production `collectstatic`
    # fills STATIC_ROOT and the reverse proxy serves it.
    django_app = ASGIStaticFilesHandler(django_app)

from gateway.app import PATH_PREFIXES, GatewayApp  # noqa: E402 (needs Django set up)
from gateway.errors import ApiError  # noqa: E402
from gateway.responses import send_error  # noqa: E402

gateway_app = GatewayApp()
# The ASGI server (httptools) sets no limit on request headers; nothing here needs more.
MAX_HEADER_BYTES = settings.GATEWAY.max_header_bytes
_HEADERS_TOO_LARGE = ApiError(
    431,
    f"The request's headers are larger than the limit of {MAX_HEADER_BYTES} bytes.",
    type="invalid_request_error",
    code="request_header_fields_too_large",
)


# Near misses of the gateway's paths (`/V1/...`, `//v1/...`): the gateway answers them, with
# an OpenAI-shaped 404 an SDK can read, not the console's HTML page.
_GATEWAY_LIKE = re.compile(r"^/+(v1(/|$)|healthz|readyz|metrics)", re.IGNORECASE)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and _header_bytes(scope) > MAX_HEADER_BYTES:
        return await send_error(send, _HEADERS_TOO_LARGE, f"req_{uuid.uuid4().hex}")
    path = scope.get("path", "")
    if scope["type"] == "lifespan" or path.startswith(PATH_PREFIXES) or _GATEWAY_LIKE.match(path):
        await gateway_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)


def _header_bytes(scope: dict[str, Any]) -> int:
    return sum(len(name) + len(value) for name, value in scope["headers"])
