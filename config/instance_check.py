"""`python -m config.instance_check`: what a restarted `tf up` may keep, read from its database.

`tf up` keeps the demo keys it issued in <var dir>/tf-up.json, because the database stores only
their hashes; on the next start it asks this module, with those keys on standard input (a JSON
list; never on a command line, where `ps` would show them), which of them this database still
accepts. It also reports where the demo backends point and which staff users exist, so that
the banner can say how to sign in. It reads only; every change stays with the audited commands
(`seed_demo`, `register_backend`).

Answers one JSON object: {"live": [<kept keys still accepted>], "backends": {name: base_url},
"staff": [usernames], "admin_exists": bool}.
"""

import json
import os
import sys
from typing import Any


def inspect(plaintexts: list[str], backend_names: list[str]) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.utils import timezone

    from customers.keys import key_id_parse, key_matches, key_refusal
    from customers.models import ApiKey
    from fleet.models import Backend

    now = timezone.now()
    live = []
    for plaintext in plaintexts:
        key = ApiKey.objects.filter(key_id=key_id_parse(plaintext) or "").first()
        if key is None or not key_matches(plaintext, key.secret_hash):
            continue
        if key_refusal(revoked=key.revoked_at is not None, expires_at=key.expires_at, now=now):
            continue
        live.append(plaintext)
    backends = Backend.objects.filter(name__in=backend_names)
    staff = User.objects.filter(is_staff=True, is_active=True).order_by("username")
    return {
        "live": live,
        "backends": {backend.name: backend.base_url for backend in backends},
        "staff": list(staff.values_list("username", flat=True)),
        "admin_exists": User.objects.filter(username="admin").exists(),
    }


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    request = json.load(sys.stdin)
    print(json.dumps(inspect(request["keys"], request["backends"])))


if __name__ == "__main__":
    main()
