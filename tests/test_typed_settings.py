"""The apps' settings are typed groups, checked once at start-up: a value not allowed stops
start-up with one line naming the variable and what it allows."""

from pathlib import Path

import environ
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from config.app_settings import (
    BillingSettings,
    GatewaySettings,
    MeteringSettings,
    StripeSettings,
)
from tests.support.manage import manage


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "GATEWAY_ADMISSION",
            "bogus",
            "GATEWAY_ADMISSION must be one of priority, fifo, not 'bogus'",
        ),
        ("GATEWAY_LEASE_SECONDS", "-5", "GATEWAY_LEASE_SECONDS must be a number greater than 0"),
        (
            "GATEWAY_KEY_CACHE_SECONDS",
            "5s",
            "GATEWAY_KEY_CACHE_SECONDS must be a number of at least 0",
        ),
        (
            "GATEWAY_MAX_ATTEMPTS",
            "abc",
            "GATEWAY_MAX_ATTEMPTS must be a whole number of at least 1",
        ),
        ("GATEWAY_MAX_BODY_BYTES", "1.5", "GATEWAY_MAX_BODY_BYTES must be a whole number"),
        (
            "GATEWAY_ALLOW_VOLATILE_REDIS",
            "maybe",
            "GATEWAY_ALLOW_VOLATILE_REDIS must be true or false",
        ),
        (
            "GATEWAY_BACKEND_ALLOWED_NETWORKS",
            "10.0.0.1/8",
            "GATEWAY_BACKEND_ALLOWED_NETWORKS must be",
        ),
        ("METERING_BATCH_SIZE", "0", "METERING_BATCH_SIZE must be a whole number of at least 1"),
        ("METERING_TELEMETRY_SECONDS", "nan", "METERING_TELEMETRY_SECONDS must be a number"),
        (
            "METERING_MAX_PROMPT_TOKENS",
            "2e6",
            "METERING_MAX_PROMPT_TOKENS must be a whole number of at least 1",
        ),
        ("BILLING_CURRENCY", "dollars", "BILLING_CURRENCY must be a three-letter currency code"),
        ("BILLING_GRACE_SECONDS", "-1", "BILLING_GRACE_SECONDS must be a number of at least 0"),
        ("STRIPE_API_BASE", "localhost:12111", "STRIPE_API_BASE must be empty or an http(s) URL"),
        ("DB_POOL_MAX_SIZE", "ten", "DB_POOL_MAX_SIZE must be a whole number of at least 1"),
        (
            "DATABASE_REPLICA_URL",
            "mysql://reader@replica/tf",
            "DATABASE_REPLICA_URL must be empty or a postgres:// URL",
        ),
        ("DEBUG", "perhaps", "DEBUG must be true or false"),
    ],
)
def test_a_value_not_allowed_stops_start_up_in_one_clear_line(
    variable: str, value: str, message: str
) -> None:
    result = manage("check", TF_PROFILE="local", **{variable: value})
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()  # one line: no traceback
    assert line.startswith(f"manage.py: {message}"), line
    assert repr(value) in line  # and the value that was given


def test_allowed_values_start(tmp_path: Path) -> None:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; g = settings.GATEWAY; "
        "print(g.admission, g.lease_seconds, g.max_attempts, g.allow_volatile_redis, "
        "g.backend_allowed_networks, settings.BILLING.currency)",
        TF_PROFILE="local",
        GATEWAY_ADMISSION="fifo",
        GATEWAY_LEASE_SECONDS="2",
        GATEWAY_MAX_ATTEMPTS=" 5 ",
        GATEWAY_ALLOW_VOLATILE_REDIS="yes",
        GATEWAY_BACKEND_ALLOWED_NETWORKS="10.20.0.0/16, fd00::/8",
        BILLING_CURRENCY="EUR",
        TF_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == "fifo 2.0 5 True ('10.20.0.0/16', 'fd00::/8') EUR"


def test_the_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(environ.Env.ENVIRON):
        if name.startswith(("GATEWAY_", "METERING_", "BILLING_", "STRIPE_")):
            monkeypatch.delenv(name)
    env = environ.Env()
    gateway = GatewaySettings.from_env(env, spool_dir="/spool", backend_allowed_networks=[])
    assert dict(gateway) == {
        "MAX_BODY_BYTES": 4 * 1024 * 1024,
        "ALLOW_VOLATILE_REDIS": False,
        "MAX_HEADER_BYTES": 32 * 1024,
        "KEY_CACHE_SECONDS": 5.0,
        "KEY_STALE_SECONDS": 300.0,
        "BACKENDS_REFRESH_SECONDS": 2.0,
        "BACKEND_EJECT_SECONDS": 5.0,
        "BACKEND_CONNECT_TIMEOUT": 2.0,
        "BACKEND_READ_TIMEOUT": 120.0,
        "MAX_ATTEMPTS": 3,
        "REDIS_MAX_CONNECTIONS": 64,
        "LEASE_SECONDS": 60.0,
        "REAPER_INTERVAL_SECONDS": 5.0,
        "PROGRESS_SECONDS": 1.0,
        "ADMISSION": "priority",
        "FAIL_OPEN_CONCURRENCY": 8,
        "FAIL_OPEN_REQUESTS_PER_MINUTE": 600,
        "METRICS_TOKEN": "",
        "PRICES_REFRESH_SECONDS": 5.0,
        "SPOOL_DIR": Path("/spool"),
        "BACKEND_ALLOWED_NETWORKS": (),
    }
    assert dict(MeteringSettings.from_env(env)) == {
        "BATCH_SIZE": 2000,
        "SHARDS": 1,
        "CLAIM_IDLE_SECONDS": 30.0,
        "TELEMETRY_SECONDS": 5.0,
        "TELEMETRY_TIMEOUT_SECONDS": 2.0,
        "ATTRIBUTION_SECONDS": 30.0,
        "ATTRIBUTION_MAX_LAG_SECONDS": 6 * 3600.0,
        "CALIBRATION_SECONDS": 3600.0,
        "MAX_PROMPT_TOKENS": 2_000_000,
        "MAX_COMPLETION_TOKENS": 1_048_576,
    }
    assert dict(BillingSettings.from_env(env)) == {
        "GRACE_SECONDS": 7200.0,
        "REBUILD_WORKERS": 2,
        "CURRENCY": "USD",
    }
    assert dict(StripeSettings.from_env(env)) == {
        "API_KEY": "",
        "WEBHOOK_SECRET": "",
        "API_BASE": "",
    }


def test_the_settings_hold_the_typed_groups() -> None:
    assert isinstance(settings.GATEWAY, GatewaySettings)
    assert isinstance(settings.METERING, MeteringSettings)
    assert isinstance(settings.BILLING, BillingSettings)
    assert isinstance(settings.STRIPE, StripeSettings)
    assert settings.GATEWAY.admission in ("priority", "fifo")


def test_a_tests_dict_override_becomes_the_group_and_is_checked() -> None:
    before = settings.GATEWAY
    with override_settings(GATEWAY={**settings.GATEWAY, "LEASE_SECONDS": 1}):
        assert isinstance(settings.GATEWAY, GatewaySettings)
        assert settings.GATEWAY.lease_seconds == 1.0
        assert settings.GATEWAY.admission == before.admission
    assert settings.GATEWAY is before
    with (
        pytest.raises(ImproperlyConfigured, match="GATEWAY_ADMISSION must be one of"),
        override_settings(GATEWAY={**settings.GATEWAY, "ADMISSION": "lifo"}),
    ):
        pass
    with (
        pytest.raises(ImproperlyConfigured, match="has no LEASE"),
        override_settings(GATEWAY={**settings.GATEWAY, "LEASE": 1}),
    ):
        pass
    assert settings.GATEWAY is before


def test_the_groups_are_frozen() -> None:
    with pytest.raises(AttributeError):
        settings.BILLING.currency = "EUR"  # type: ignore[misc]
