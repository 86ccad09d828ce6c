"""Populated databases migrate forward and lose nothing: one from before tenancy, prices, the
fleet and the audit log moved to their own apps (customers, catalogue, fleet, audit), and one
whose energy models priced decode with a log term (metering 0014)."""

import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from django.conf import settings

from tests.support.servers import ROOT

# The last migrations before the move.
BEFORE_THE_MOVE = [
    ("gateway", "0005_backend_url_policy"),
    ("billing", "0004_rollup_margin_coverage"),
    ("console", "0002_stafftoken_scopes"),
    ("auth", "0012_alter_user_first_name_max_length"),
]

POPULATE = """
INSERT INTO gateway_tier (slug, name, priority, allowed_models, queue_timeout_seconds,
                          when_redis_down)
VALUES ('premium', 'Premium', 0, '{}', 30, 'closed');
INSERT INTO gateway_account (name, status, tier_id, stripe_customer_id, created_at)
SELECT 'acme', 'active', id, 'cus_1', now() FROM gateway_tier;
INSERT INTO gateway_limitoverride (account_id, requests_per_minute)
SELECT id, 7 FROM gateway_account;
INSERT INTO gateway_apikey (account_id, name, key_id, secret_hash, created_at)
SELECT id, 'main', 'abcdef012345', repeat('0', 64), now() FROM gateway_account;
INSERT INTO gateway_backend (name, base_url, upstream_model, public_models,
                             max_concurrent_sequences, supports_priority, telemetry_url,
                             enabled, health)
VALUES ('gpu-a', 'http://127.0.0.1:9', 'llama', '{llama}', 8, false, '', true, 'unknown');
INSERT INTO billing_pricebook (name, currency, effective_from, created_at)
VALUES ('2026', 'USD', '2026-01-01', now());
INSERT INTO billing_price (price_book_id, tier, model, input_per_million,
                           cached_input_per_million, output_per_million, request_fee)
SELECT id, 'premium', '*', 0.3, 0.15, 0.9, 0 FROM billing_pricebook;
INSERT INTO billing_planprice (price_book_id, tier, monthly_fee, included_tokens)
SELECT id, 'premium', 10, 1000 FROM billing_pricebook;
INSERT INTO billing_budget (account_id, monthly_limit, currency, alert_percents, hard_cap)
SELECT id, 100, 'USD', '{50,90}', true FROM gateway_account;
INSERT INTO console_auditentry (at, actor, action, object_type, object_id)
SELECT now(), 'alice', 'suspend', 'gateway.account', id::text FROM gateway_account;
-- The content type and permission the code before the move made for the gateway's accounts
-- (a migrate run by today's code makes none: the gateway app has no models now).
INSERT INTO django_content_type (app_label, model) VALUES ('gateway', 'account')
ON CONFLICT DO NOTHING;
INSERT INTO auth_permission (name, content_type_id, codename)
SELECT 'Can change account', id, 'change_account' FROM django_content_type
WHERE app_label = 'gateway' AND model = 'account'
ON CONFLICT DO NOTHING;
INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                       is_staff, is_active, date_joined)
VALUES ('', false, 'viewer', '', '', '', true, true, now());
"""


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own, dropped afterwards."""
    name = f"tf_migrate_{uuid.uuid4().hex[:8]}"
    server = settings.DATABASES["default"]
    dsn = f"host={server['HOST']} port={server['PORT']} user={server['USER']} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.replace("dbname=postgres", f"dbname={name}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def migrate(dsn: str, *target: str) -> None:
    parts = dict(part.split("=", 1) for part in dsn.split())
    url = f"postgres://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    env = {**os.environ, "DATABASE_URL": url, "TF_PROFILE": "local"}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", *target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(240)
def test_a_populated_database_migrates_forward_and_loses_nothing(database: str) -> None:
    for app, name in BEFORE_THE_MOVE:
        migrate(database, app, name)
    with psycopg.connect(database) as conn:
        conn.execute(POPULATE)
        # The viewer may change accounts and view price books, as staff set it up.
        conn.execute(
            "INSERT INTO auth_user_user_permissions (user_id, permission_id) "
            "SELECT u.id, p.id FROM auth_user u, auth_permission p "
            "JOIN django_content_type c ON c.id = p.content_type_id "
            "WHERE (c.app_label, p.codename) IN "
            "(('gateway', 'change_account'), ('billing', 'view_pricebook'))"
        )

    migrate(database)

    with psycopg.connect(database) as conn:

        def rows(sql: str) -> list[tuple[object, ...]]:
            return conn.execute(sql).fetchall()

        assert rows(
            "SELECT a.name, t.slug, a.stripe_customer_id, o.requests_per_minute, k.key_id "
            "FROM customers_account a JOIN customers_tier t ON t.id = a.tier_id "
            "JOIN customers_limitoverride o ON o.account_id = a.id "
            "JOIN customers_apikey k ON k.account_id = a.id"
        ) == [("acme", "premium", "cus_1", 7, "abcdef012345")]
        assert rows("SELECT name, public_models FROM fleet_backend") == [("gpu-a", ["llama"])]
        assert rows(
            "SELECT b.name, p.tier, p.output_per_million, l.included_tokens "
            "FROM catalogue_pricebook b JOIN catalogue_price p ON p.price_book_id = b.id "
            "JOIN catalogue_planprice l ON l.price_book_id = b.id"
        ) == [("2026", "premium", Decimal("0.9"), 1000)]
        assert rows("SELECT monthly_limit, hard_cap FROM customers_budget") == [
            (Decimal(100), True)
        ]
        assert rows("SELECT actor, object_type FROM audit_auditentry") == [
            ("alice", "customers.account")
        ]
        assert sorted(
            rows(
                "SELECT c.app_label, p.codename FROM auth_user_user_permissions up "
                "JOIN auth_permission p ON p.id = up.permission_id "
                "JOIN django_content_type c ON c.id = p.content_type_id"
            )
        ) == [("catalogue", "view_pricebook"), ("customers", "change_account")]
        # No table is left under its old name.
        assert rows(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_name LIKE 'gateway\\_%' OR table_name IN "
            "('billing_pricebook', 'billing_price', 'billing_planprice', 'billing_budget', "
            "'console_auditentry')"
        ) == [(0,)]


@pytest.mark.timeout(240)
def test_energy_models_keep_their_decode_power_as_a_curve_in_the_batch(database: str) -> None:
    migrate(database, "metering", "0013_energy_decode_step_seconds")
    with psycopg.connect(database) as conn:
        # A fitted model with a decode step's time (its price per token becomes power), and
        # one without (its price per token stays).
        conn.execute(
            "INSERT INTO metering_energycalibration (backend, source, fitted_at, idle_watts, "
            "prefill_j_per_token, prefill_j_per_request, decode_watts, decode_j_per_token, "
            "decode_log_watts, ttft_seconds, ttft_seconds_per_token, prefill_seconds, "
            "decode_step_seconds, decode_step_seconds_per_sequence) VALUES "
            "('a', 'fitted', now(), 220, 0.07, 14, 300, 0.2, 75, 0, 0, 0, 0.01, 0.001), "
            "('b', 'configured', now(), 220, 0.07, 14, 300, 0.4, 0, 0, 0, 0, 0, 0)"
        )

    migrate(database)

    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT backend, decode_watts, decode_j_per_token FROM metering_energycalibration "
            "ORDER BY backend"
        ).fetchall()
    curve = [
        300 + 75 * math.log(n) + 0.2 * n / (0.01 + 0.001 * n) for n in (2**j for j in range(9))
    ]
    assert rows == [
        ("a", pytest.approx(curve), 0.0),
        ("b", [300.0] * 9, 0.4),
    ]
