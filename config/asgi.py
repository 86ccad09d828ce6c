"""ASGI entry: the gateway's hot path for inference and health, Django for everything else."""

import os
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


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan" or scope["path"].startswith(PATH_PREFIXES):
        await gateway_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)
