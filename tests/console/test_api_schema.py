"""The OpenAPI schema validates without warnings, and its docs are served without a CDN."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient


def test_the_schema_validates_without_warnings(tmp_path: object) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", f"{tmp_path}/s.yaml")


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_browsable_docs_use_local_static_files(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/" in page
    assert "cdn." not in page and "unpkg" not in page


def test_the_schema_describes_both_kinds_of_token() -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["staffToken"]["scheme"] == "bearer"
    assert schemes["apiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/me/"]["get"]["security"] == [{"apiKey": []}]
