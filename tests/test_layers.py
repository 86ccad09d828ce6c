"""Each app's SQL reads only its own tables and those of the layers below it, as its imports do
(import-linter checks those in `make lint`; docs/architecture.md)."""

import ast
import re

import pytest
from django.apps import apps

from tests.support.servers import ROOT

# Lowest first; apps in one layer are independent of each other.
LAYERS = [
    {"audit"},
    {"customers", "catalogue", "fleet"},
    {"metering"},
    {"gateway", "billing"},
    {"console", "portal"},
]
APPS = sorted(set().union(*LAYERS))
TABLE = re.compile(r"\b(" + "|".join(APPS) + r")_([a-z]+)\b")


def readable(app: str) -> set[str]:
    """The apps whose tables `app` may read: its own, and every layer below its own."""
    level = next(n for n, layer in enumerate(LAYERS) if app in layer)
    return {app}.union(*LAYERS[:level])


def sql_texts(app: str) -> list[tuple[str, str]]:
    """(where, text) of every SQL file of the app and every string constant of its modules
    (migrations aside: they may name the tables they move)."""
    texts = [
        (str(path.relative_to(ROOT)), path.read_text()) for path in (ROOT / app).rglob("*.sql")
    ]
    for path in (ROOT / app).rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.value))
    return texts


def tables_read(text: str) -> set[tuple[str, str]]:
    """(app, table) named in SQL: only words that are tables (an app's prefix, then a model)."""
    tables = {model._meta.db_table for model in apps.get_models()}
    return {(m[1], m[0]) for m in TABLE.finditer(text) if m[0] in tables}


@pytest.mark.parametrize("app", APPS)
def test_an_apps_sql_reads_only_tables_of_its_layer_and_below(app: str) -> None:
    allowed = readable(app)
    outside = sorted(
        f"{where}: {table}"
        for where, text in sql_texts(app)
        for owner, table in tables_read(text)
        if owner not in allowed
    )
    assert not outside, f"{app} reads tables of apps above it or beside it: {outside}"


def test_it_sees_the_tables_the_gateway_reads() -> None:
    read = {table for _, text in sql_texts("gateway") for _, table in tables_read(text)}
    assert {"customers_apikey", "customers_account", "fleet_backend"} <= read
