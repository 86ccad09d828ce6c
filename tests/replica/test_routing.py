"""The router's parts that need no replica (config/db_routing.py)."""

import pytest
from django.apps import apps

from config.db_routing import (
    PRIMARY_ONLY,
    lsn_parse,
    read_alias,
    reading,
    replica_configured,
    replica_reads,
)


def test_every_primary_only_name_is_an_installed_app_or_model() -> None:
    labels = {config.label for config in apps.get_app_configs()}
    models = {model._meta.label_lower for model in apps.get_models()}
    assert not PRIMARY_ONLY - labels - models


def test_a_wal_position_reads_as_postgresql_writes_it() -> None:
    assert lsn_parse("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn_parse("0/0") == 0
    assert lsn_parse("") is None
    assert lsn_parse("16-B374D848") is None
    assert lsn_parse("xyz/1") is None


def test_without_a_replica_every_read_is_the_primarys() -> None:
    if replica_configured():
        pytest.skip("this run has DATABASE_REPLICA_URL")
    with replica_reads() as scope:
        assert scope.alias == "default"
        assert read_alias() == "default"
        assert reading().alias == "default"
