"""The production profile is safe to expose; the local one works with no configuration."""

import secrets
from pathlib import Path

from tests.support.manage import manage


def test_the_production_profile_passes_the_deploy_checks() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="tf.example.com",
    )
    assert result.returncode == 0, result.stderr


def test_production_refuses_to_start_without_a_secret_key_in_one_clear_line() -> None:
    result = manage("check")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("manage.py: Set the SECRET_KEY environment variable")


def test_the_spool_lives_under_the_instances_var_dir(tmp_path: Path) -> None:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.GATEWAY.spool_dir)",
        TF_PROFILE="local",
        TF_VAR_DIR=str(tmp_path),
    )
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "spool"), result.stderr


def test_without_a_replica_there_is_one_database_and_nothing_routes() -> None:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; "
        "print(sorted(s.DATABASES), s.DATABASE_ROUTERS, [m for m in s.MIDDLEWARE if 'db_' in m])",
        TF_PROFILE="local",
        DATABASE_REPLICA_URL="",
    )
    assert result.stdout.strip().splitlines()[-1] == "['default'] [] []", result.stderr


def test_a_replica_is_a_second_database_read_through_the_router_and_a_test_mirror() -> None:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; r = s.DATABASES['replica']; "
        "print(r['HOST'], r['NAME'], r['TEST']['MIRROR'], r['OPTIONS']['pool'], "
        "s.DATABASE_ROUTERS, [m for m in s.MIDDLEWARE if 'db_' in m])",
        TF_PROFILE="local",
        DATABASE_REPLICA_URL="postgres://reader@replica.example:5432/tf",
        DB_POOL_MAX_SIZE="4",
    )
    assert result.stdout.strip().splitlines()[-1] == (
        "replica.example tf default "
        "{'min_size': 1, 'max_size': 4, 'timeout': 2.0} "
        "['config.db_routing.ReplicaRouter'] ['config.db_routing.ReplicaReadsMiddleware']"
    ), result.stderr
