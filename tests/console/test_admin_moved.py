"""Console pages of models that moved to the bottom apps still open from old bookmarks."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/admin/gateway/apikey/?q=ci", "/admin/customers/apikey/?q=ci"),
        ("/admin/gateway/backend/7/change/", "/admin/fleet/backend/7/change/"),
        ("/admin/billing/pricebook/add/", "/admin/catalogue/pricebook/add/"),
        ("/admin/billing/budget/", "/admin/customers/budget/"),
        ("/admin/console/auditentry/", "/admin/audit/auditentry/"),
    ],
)
def test_an_old_page_redirects_to_its_new_place(old: str, new: str) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "a passphrase"))
    response = client.get(old)
    assert (response.status_code, response["Location"]) == (301, new)


def test_signed_out_it_asks_for_a_sign_in_first() -> None:
    response = Client().get("/admin/gateway/apikey/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
