"""When a staff session counts: the console's two-factor policy, shared by the admin and the API.

With CONSOLE_REQUIRE_TWO_FACTOR on (production's default) every staff user needs a confirmed
TOTP device and a session verified by it; until they have one the console sends them to set
it up. With it off, a user without a device signs in with the password alone; once a user
has a device, its code is always required.
"""

from typing import Any

from django.conf import settings
from django_otp import user_has_device


def two_factor_required() -> bool:
    return bool(settings.CONSOLE_REQUIRE_TWO_FACTOR)


def staff_session_allowed(user: Any) -> bool:
    """Whether this signed-in user's session may act as staff right now."""
    if _verified(user):
        return True
    return not two_factor_required() and not user_has_device(user)


def staff_needs_device(user: Any) -> bool:
    """Whether a signed-in staff user must set up a device before using the console."""
    return two_factor_required() and not _verified(user) and not user_has_device(user)


def _verified(user: Any) -> bool:
    # django_otp's middleware gives each request's user `is_verified`; users from elsewhere
    # (a token's, a test's forced one) have not passed a second factor.
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified()) if callable(is_verified) else False
