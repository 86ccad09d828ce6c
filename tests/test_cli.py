"""`tf up` end to end (embedded PostgreSQL and Redis, every service, a real call, a clean stop),
what a restart of the same var dir keeps, and the demo data it seeds."""

import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import psutil
import psycopg
import pytest
import requests

from config.cli import port_bindable
from customers.keys import key_id_parse
from customers.models import ApiKey
from fleet.models import Backend
from gateway.demo import demo_seed
from tests.support.servers import ROOT, free_port
from tests.support.tfup import (
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    TF,
    TfUp,
    curl_parse,
    make_env,
    tf_up_running,
)


@pytest.fixture
def tf_up(tmp_path: Path) -> Iterator[TfUp]:
    with tf_up_running(tmp_path) as tf:
        yield tf


def processes_using(path: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL and Redis are found by their data directory, named in argv."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_it_serves_a_completion_and_stops_everything_on_ctrl_c(tf_up: TfUp, tmp_path: Path) -> None:
    curl = tf_up.wait_for_line("curl ", READY_TIMEOUT_SECONDS)
    base_url, api_key = curl_parse(curl)

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    completion = client.chat.completions.create(
        model="llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=16,
    )
    children = tf_up.children(recursive=False)
    descendants = tf_up.children(recursive=True)
    tf_up.process.send_signal(signal.SIGINT)
    exit_code = tf_up.process.wait(STOP_TIMEOUT_SECONDS)

    assert completion.model == "llama-3.1-8b-instruct"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= 16
    assert exit_code == 0, tf_up.output()
    # redis, sim-a, sim-b, meter, worker, beat and gateway, with their own children below them
    assert len(children) == 7
    assert [process for process in descendants if process.is_running()] == []
    assert processes_using(tmp_path) == []
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    # Nothing a newcomer could not act on: Redis's overcommit advice, Celery's root warning.
    output = "\n".join(tf_up.lines)
    assert "overcommit" not in output
    assert "superuser privileges" not in output


@pytest.mark.django_db
def test_seeding_again_issues_new_keys_and_revokes_the_earlier_ones() -> None:
    urls = {"sim-a": "http://127.0.0.1:9101", "sim-b": "http://127.0.0.1:9102/"}
    first = demo_seed(backend_urls=urls)
    second = demo_seed(backend_urls=urls)

    assert [(key.account, key.tier) for key in second] == [
        ("acme-research", "premium"),
        ("northwind-apps", "interactive"),
        ("hobbyist", "free"),
    ]
    demo_keys = ApiKey.objects.filter(name="tf-up", account__name__in=[k.account for k in second])
    live = {key.key_id for key in demo_keys if key.revoked_at is None}
    revoked = {key.key_id for key in demo_keys if key.revoked_at is not None}
    assert live == {key_id_parse(key.plaintext) for key in second}
    assert revoked == {key_id_parse(key.plaintext) for key in first}
    sim_b = Backend.objects.get(name="sim-b")
    assert (sim_b.base_url, sim_b.telemetry_url) == (
        "http://127.0.0.1:9102",
        "http://127.0.0.1:9102/dcgm/metrics",
    )
    assert sim_b.public_models == ["llama-3.1-8b-instruct"]


class TfUpWith(TfUp):
    """`tf up` with extra arguments (e.g. --rotate-keys), otherwise as tests.support.tfup's."""

    def __init__(self, var_dir: Path, port: int, *args: str) -> None:
        self.var_dir = var_dir
        self.port = port
        self.process = subprocess.Popen(
            [TF, "up", "--port", str(port), "--var-dir", str(var_dir), *args],
            cwd=ROOT,
            env=make_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@contextmanager
def banner_shown(var_dir: Path, port: int, *args: str) -> Iterator[list[str]]:
    """A `tf up` until its banner is printed, then its banner's lines; stopped with Ctrl-C
    (and checked to stop cleanly) at the end of the block."""
    tf = TfUpWith(var_dir, port, *args)
    try:
        tf.wait_for_line("Ctrl-C stops everything.", READY_TIMEOUT_SECONDS)
        start = max(i for i, line in enumerate(tf.lines) if line.startswith("Token Factory is up"))
        end = tf.lines.index("Ctrl-C stops everything.", start)
        yield tf.lines[start : end + 1]
    finally:
        tf.process.send_signal(signal.SIGINT)
        exit_code = tf.process.wait(STOP_TIMEOUT_SECONDS)
    assert exit_code == 0, tf.output()


def line_of(banner: list[str], name: str) -> str:
    """The text after `name` on the banner's line that starts with it."""
    return next(
        line.strip().removeprefix(name).strip() for line in banner if line.strip().startswith(name)
    )


def keys_in(banner: list[str]) -> list[str]:
    return [m.group(0) for line in banner if (m := re.search(r"tf_[0-9a-f]{12}_\S+$", line))]


def port_with_two_free_after() -> int:
    """A free port whose next two are free too, for the simulators to follow it."""
    while True:
        port = free_port()
        if port < 65534 and port_bindable(port + 1) and port_bindable(port + 2):
            return port


def local_session() -> requests.Session:
    """Straight to 127.0.0.1, whatever HTTP_PROXY says."""
    session = requests.Session()
    session.trust_env = False
    return session


def models_status(gateway: str, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return local_session().get(f"{gateway}/v1/models", headers=headers, timeout=30).status_code


def console_sign_in(console: str, username: str, password: str) -> requests.Response:
    """Sign in on the console's login page as a person would; the page they land on."""
    session = local_session()
    page = session.get(f"{console}login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None, page.text
    form = {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password}
    return session.post(f"{console}login/?next=/admin/", data=form, timeout=30)


def test_a_restart_keeps_ports_and_keys_and_rotate_keys_revokes_them_audited(
    tmp_path: Path,
) -> None:
    port = port_with_two_free_after()
    gateway = f"http://127.0.0.1:{port}"

    with banner_shown(tmp_path, port) as first:
        console = line_of(first, "console").split()[0]
        docs = local_session().get(line_of(first, "API docs").split()[0], timeout=30)
        sign_in = re.search(r"user admin, password (\S+)", "\n".join(first))
        assert sign_in is not None, first
        signed_in = console_sign_in(console, "admin", sign_in.group(1))
        first_keys = keys_in(first)
        first_key_works = models_status(gateway, first_keys[0])

    with banner_shown(tmp_path, port) as second:
        kept_key_works = models_status(gateway, first_keys[0])

    with banner_shown(tmp_path, port, "--rotate-keys") as third:
        revoked_key = models_status(gateway, first_keys[0])
        new_key_works = models_status(gateway, keys_in(third)[0])
        with psycopg.connect(line_of(third, "PostgreSQL")) as db:
            revocations = db.execute(
                "SELECT k.key_id, e.actor FROM audit_auditentry e"
                " JOIN customers_apikey k ON k.id::text = e.object_id"
                " WHERE e.object_type = 'customers.apikey' AND e.action = 'revoke'"
            ).fetchall()

    assert console == f"{gateway}/admin/"
    assert signed_in.url == f"{gateway}/admin/", signed_in.text[:2000]
    assert docs.status_code == 200
    assert line_of(first, "simulators") == (
        f"sim-a http://127.0.0.1:{port + 1}, sim-b http://127.0.0.1:{port + 2}"
    )
    assert first_key_works == 200
    # The second start: the same URLs, the same keys, still good; the staff user kept.
    for name in ("PostgreSQL", "Redis", "simulators", "console", "API docs"):
        assert line_of(second, name) == line_of(first, name)
    assert keys_in(second) == first_keys
    assert kept_key_works == 200
    assert "tf manage changepassword admin" in line_of(second, "as admin")
    assert not any("password" in line and "user admin" in line for line in second)
    # --rotate-keys: new keys, the old ones refused, each revocation in the audit log.
    assert set(keys_in(third)).isdisjoint(first_keys)
    assert len(keys_in(third)) == 3
    assert (revoked_key, new_key_works) == (401, 200)
    assert {key_id for key_id, _ in revocations} == {key_id_parse(key) for key in first_keys}
    assert len(revocations) == 3
    assert {actor.partition(" by ")[0] for _, actor in revocations} == {"command:seed_demo"}
