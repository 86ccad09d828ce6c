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
