"""Backends may not be registered at addresses that would turn the gateway against its own
machine or the cloud's metadata service (SSRF), unless the operator allows their network."""

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import override_settings

from console.models import Scope
from console.tokens import staff_token_issue
from fleet.models import Backend
from fleet.network_policy import backend_url_validate
from fleet.services import backend_register
from tests.console.api_support import token_client

PRODUCTION = {"BACKEND_ALLOWED_NETWORKS": []}


def production_policy(**gateway: object) -> override_settings:
    return override_settings(GATEWAY={**settings.GATEWAY, **PRODUCTION, **gateway})


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # the cloud's metadata service
        "http://127.0.0.1:8000",  # the gateway and console themselves
        "http://localhost:5432",
        "http://[::1]:8000",
        "http://[::ffff:127.0.0.1]:8000",
        "http://10.0.0.5:8000",
        "http://192.168.1.20:8000",
        "http://0.0.0.0:8000",
        "ftp://203.0.113.1/",
        f"http://{'a' * 64}.example.com/",  # a label too long to resolve (schemathesis found it)
    ],
)
def test_production_refuses_special_purpose_addresses(url: str) -> None:
    with production_policy(), pytest.raises(ValidationError):
        backend_url_validate(url)


def test_production_accepts_a_public_address_and_an_allowed_gpu_subnet() -> None:
    with production_policy(BACKEND_ALLOWED_NETWORKS=["10.20.0.0/16"]):
        backend_url_validate("http://8.8.8.8:8000")
        backend_url_validate("http://10.20.3.4:8000")
        with pytest.raises(ValidationError):
            backend_url_validate("http://10.21.3.4:8000")


def test_a_local_instance_allows_its_simulators_but_never_link_local() -> None:
    backend_url_validate("http://127.0.0.1:9101")
    with pytest.raises(ValidationError):
        backend_url_validate("http://169.254.169.254/")


@pytest.mark.django_db
def test_every_way_of_registering_a_backend_applies_the_policy() -> None:
    metadata = "http://169.254.169.254"
    with pytest.raises(ValidationError):
        backend_register(name="x", base_url=metadata, upstream_model="m", public_models=["m"])
    with pytest.raises(CommandError, match=r"169\.254\.169\.254"):
        call_command("register_backend", "x", metadata, "--upstream-model", "m")
    admin = User.objects.create_superuser("policy-admin")
    token = staff_token_issue(actor="test", user=admin, scopes=Scope.values)
    client = token_client(token.plaintext)
    response = client.post(
        "/api/v1/backends/",
        {"name": "x", "base_url": metadata, "upstream_model": "m", "public_models": ["m"]},
        format="json",
    )
    assert response.status_code == 400
    assert "base_url" in str(response.json())
    assert not Backend.objects.filter(name="x").exists()
