# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""The schema (/api/schema/) and its UIs (/api/docs/, /api/redoc/): drf-spectacular's views,
open to anyone, answering errors (a wrong method, an unknown format) in the API's JSON shape
rather than in YAML or HTML."""

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response


class JsonErrors:
    """Errors in the API's JSON shape, whatever the view renders on success (YAML, HTML)."""

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Any:
        if getattr(response, "exception", False):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class SchemaView(JsonErrors, SpectacularAPIView):
    pass


class SwaggerView(JsonErrors, SpectacularSwaggerView):
    pass


class RedocView(JsonErrors, SpectacularRedocView):
    pass
