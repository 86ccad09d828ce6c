"""The staff console: Django's admin with two-factor sign-in, a dashboard and audited actions.

Two-factor authentication is available to every staff user (a TOTP app, set up under
"Two-factor"); once a user has a confirmed device, signing in needs its code as well as the
password and the session only counts as staff after it. Where CONSOLE_REQUIRE_TWO_FACTOR is
on (console/two_factor.py), a staff user without a device is sent to set one up and reaches
no other page until then. Failed sign-ins are throttled by django-axes (settings AXES_*).
"""

import base64
import io
from collections.abc import Callable
from functools import update_wrapper
from typing import Any

import qrcode
import qrcode.image.svg
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path
from django.utils import timezone
from django_otp import devices_for_user, user_has_device
from django_otp import login as otp_login
from django_otp.admin import OTPAdminAuthenticationForm
from django_otp.plugins.otp_totp.models import TOTPDevice

from config.db_routing import replica_lag_note
from console.dashboard import dashboard_data
from console.two_factor import staff_needs_device, two_factor_required


class ConsoleLoginForm(OTPAdminAuthenticationForm):  # type: ignore[misc]
    """Password, then the TOTP code for users who have set up a device."""

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = AdminAuthenticationForm.clean(self)
        self.cleaned_data = cleaned
        user = self.get_user()
        if user is not None and user_has_device(user):
            self.clean_otp(user)
        return cleaned

    def _chosen_device(self, user: Any) -> Any:
        # Staff have one authenticator: use it when the form did not name a device.
        chosen = super()._chosen_device(user)
        if chosen is None and not self.cleaned_data.get("otp_device"):
            chosen = next(iter(devices_for_user(user, confirmed=True)), None)
        return chosen


class ConsoleAdminSite(admin.AdminSite):
    site_header = "Token Factory console"
    site_title = "Token Factory"
    index_title = "Administration"
    login_form = ConsoleLoginForm
    login_template = "otp/admin111/login.html"
    index_template = "console/index.html"

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        user: Any = request.user
        return bool(user.is_verified()) or not user_has_device(user)

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        """Every page's context; a page read from a replica that lags says so at its top."""
        note = replica_lag_note()
        if note is not None:
            messages.warning(request, note, fail_silently=True)
        return super().each_context(request)

    def admin_view(self, view: Callable[..., Any], cacheable: bool = False) -> Any:
        """Every console page, but where two-factor is required and the user has no device
        yet, only the page that sets one up (and signing out)."""

        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if view not in (self.two_factor, self.logout) and staff_needs_device(request.user):
                return redirect("admin:two-factor")
            return view(request, *args, **kwargs)

        return super().admin_view(update_wrapper(guarded, view), cacheable)

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            *(
                path(f"{old}/{rest}", self.admin_view(_moved_to(old, new)))
                for old, new in _MOVED.items()
                for rest in ("", "<path:rest>")
            ),
            path("dashboard/", self.admin_view(self.dashboard), name="dashboard"),
            path(
                "dashboard/data.json", self.admin_view(self.dashboard_json), name="dashboard-data"
            ),
            path("two-factor/", self.admin_view(self.two_factor), name="two-factor"),
            *super().get_urls(),
        ]

    def dashboard(self, request: HttpRequest) -> HttpResponse:
        context = {**self.each_context(request), "title": "Dashboard"}
        return TemplateResponse(request, "console/dashboard.html", context)

    def dashboard_json(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse(dashboard_data(now=timezone.now()))

    def two_factor(self, request: HttpRequest) -> HttpResponse:
        """Set up a TOTP device: show its QR code, confirm it with a first code."""
        user: Any = request.user
        confirmed = list(devices_for_user(user, confirmed=True))
        device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
        if request.method == "POST" and device is not None:
            if device.verify_token(request.POST.get("token", "")):
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                otp_login(request, device)  # this session is verified by the new device
                messages.success(request, "Two-factor authentication is on.")
                return redirect("admin:index")
            messages.error(request, "That code is not valid; try the next one.")
        if not confirmed and device is None:
            device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
        context = {
            **self.each_context(request),
            "title": "Two-factor authentication",
            "enabled": bool(confirmed),
            "required": two_factor_required(),
            "qr_svg": _qr_svg(device.config_url) if device is not None and not confirmed else "",
            "secret": base64.b32encode(device.bin_key).decode() if device and not confirmed else "",
        }
        return TemplateResponse(request, "console/two_factor.html", context)


# Pages whose models moved to the bottom apps (docs/architecture.md): old bookmarks still work.
_MOVED = {
    f"{app}/{model}": f"{new}/{model}"
    for app, new, models in (
        ("gateway", "customers", ("tier", "account", "limitoverride", "apikey")),
        ("gateway", "fleet", ("backend",)),
        ("billing", "catalogue", ("pricebook", "price", "planprice")),
        ("billing", "customers", ("budget",)),
        ("console", "audit", ("auditentry",)),
    )
    for model in models
}


def _moved_to(old: str, new: str) -> Callable[..., HttpResponse]:
    def moved(request: HttpRequest, rest: str = "") -> HttpResponse:
        query = request.META.get("QUERY_STRING", "")
        to = request.path.replace(f"/{old}/", f"/{new}/", 1)
        return redirect(to + (f"?{query}" if query else ""), permanent=True)

    return moved


def _qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer)
    return buffer.getvalue().decode()
