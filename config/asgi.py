"""ASGI entry: the gateway's hot path for inference and health, Django for everything else."""

import os
import re
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

gateway_app = GatewayApp()


# Near misses of the gateway's paths (`/V1/...`, `//v1/...`): the gateway answers them, with
# an OpenAI-shaped 404 an SDK can read, not the console's HTML page.
_GATEWAY_LIKE = re.compile(r"^/+(v1(/|$)|healthz|readyz|metrics)", re.IGNORECASE)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] == "lifespan" or path.startswith(PATH_PREFIXES) or _GATEWAY_LIKE.match(path):
        await gateway_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)
