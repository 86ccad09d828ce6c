"""Who is asking: the member behind a portal request, found again on every request.

A user may belong to several accounts; the session names the one they are working in
(SESSION_ACCOUNT), and every page looks the membership up afresh, so a member removed a moment
ago reaches nothing of that account on their next click. Every page reads and writes only
through the member this returns (its account, its role): ids in URLs are looked up within it.
"""

from collections.abc import Callable
from functools import update_wrapper
from typing import Any

from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode
from django_otp import user_has_device

from customers.members import may
from customers.models import Member

SESSION_ACCOUNT = "portal_account_id"

# A page's view: (request, member, **the URL's arguments) -> response.
MemberView = Callable[..., HttpResponseBase]


def memberships(user: Any) -> "list[Member]":
    return list(
        Member.objects.select_related("account").filter(user=user).order_by("account__name")
    )


def current_member(request: HttpRequest) -> Member | None:
    """The signed-in user's membership in the session's account (else their first one), or
    None: not signed in, two-factor not passed, or a member of no account."""
    user: Any = request.user
    if not user.is_authenticated or not user.is_active:
        return None
    if user_has_device(user) and not user.is_verified():
        return None
    found = Member.objects.select_related("account", "user").filter(user=user)
    chosen = request.session.get(SESSION_ACCOUNT)
    member = found.filter(account_id=chosen).first() if isinstance(chosen, int) else None
    if member is None:
        member = found.order_by("account__name").first()
        if member is None:
            return None
        request.session[SESSION_ACCOUNT] = member.account_id
    return member


def member_required(
    action: str | None = None,
) -> Callable[[MemberView], Callable[..., HttpResponseBase]]:
    """A portal page: signed-in members only (others go to sign in), and only those whose
    role `may` do `action` (others get the 403 page). The view gets the member."""

    def decorate(view: MemberView) -> Callable[..., HttpResponseBase]:
        def page(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            member = current_member(request)
            if member is None:
                return _to_sign_in(request)
            if action is not None and not may(member, action):
                return forbidden(request, member)
            return view(request, member, *args, **kwargs)

        return update_wrapper(page, view)

    return decorate


def forbidden(request: HttpRequest, member: Member) -> HttpResponse:
    context = {"member": member, "title": "Not for your role"}
    return TemplateResponse(request, "portal/403.html", context, status=403)


def _to_sign_in(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    if user.is_authenticated:
        # Signed in, but a member of no account (removed a moment ago, or staff), or without
        # the two-factor code. Staff keep their console session.
        if not user.is_staff:
            logout(request)
        messages.info(request, "Sign in as a member of an account to use the portal.")
    login = reverse("portal:login")
    if request.method == "GET":
        login += "?" + urlencode({"next": request.get_full_path()})
    return redirect(login)
