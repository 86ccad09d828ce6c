"""ASGI entry: the gateway's hot path for inference and health, Django for everything else."""

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from gateway.app import PATH_PREFIXES, GatewayApp  # noqa: E402 (needs Django set up)

gateway_app = GatewayApp()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan" or scope["path"].startswith(PATH_PREFIXES):
        await gateway_app(scope, receive, send)
    else:
        await django_app(scope, receive, send)
