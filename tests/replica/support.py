"""The read replica's tests' console, as staff reach it over HTTP, and the seed's values
(tests/replica/seed.py) that they look for on its pages."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from config.db_routing import PIN_COOKIE
from tests.support.servers import Server
from tests.support.waiting import wait_until

USERNAME = "staff"
PASSWORD = "correct horse battery staple"
ACCOUNT = "Acme"
MODEL = "llama-3.1-8b"
STARTED_AT = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
ROLLED_UP_TO = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Console:
    """The console's process, reading the pair's primary and replica, and what the seed made."""

    server: Server
    token: str
    spare_token: str
    account_id: int
    request_id: str

    @property
    def url(self) -> str:
        return self.server.url

    def log(self) -> str:
        return Path(self.server.log.name).read_text()

    def api(self, path: str, token: str | None = None) -> requests.Response:
        """A staff token's GET, from a client with no cookies: never pinned to the primary."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return client().get(self.url + path, headers=headers, timeout=30)

    def staff(self) -> requests.Session:
        """A staff member signed in, once the replica has their sign-in (its pin released):
        from then on their pages read the replica."""
        session = client()
        page = session.get(f"{self.url}/admin/login/", timeout=30)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf is not None, page.text
        form = {"csrfmiddlewaretoken": csrf.group(1), "username": USERNAME, "password": PASSWORD}
        landed = session.post(f"{self.url}/admin/login/?next=/admin/", data=form, timeout=30)
        assert 'id="logout-form"' in landed.text, landed.text
        assert PIN_COOKIE in landed.history[0].cookies  # a sign-in writes: the client is pinned

        def unpinned() -> bool:
            session.get(f"{self.url}/admin/", timeout=30).raise_for_status()
            return PIN_COOKIE not in session.cookies

        wait_until(unpinned, what="the sign-in's pin to be released", timeout=15, interval=0.2)
        return session


def client() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # straight to 127.0.0.1, whatever HTTP_PROXY says
    return session
