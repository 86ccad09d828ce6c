"""Signing in and out, choosing the account to work in, and accepting an invitation.

Password resets are Django's own views (portal/urls.py) with the portal's templates."""

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model, login, logout
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_otp import login as otp_login

from customers.members import MemberError, invitation_accept, invitation_find, member_user_create
from customers.models import Invitation
from portal.access import SESSION_ACCOUNT, current_member, memberships
from portal.forms import SignInForm, SignUpForm

# The authentication backend a new member is signed in with (no password check to repeat).
_BACKEND = "django.contrib.auth.backends.ModelBackend"


def sign_in(request: HttpRequest) -> HttpResponse:
    # Someone signing in to accept an invitation may be a member of no account yet.
    joining = _next(request).startswith("/portal/invite/")
    form = SignInForm(request, request.POST or None, joining=joining)
    if request.method == "POST" and form.is_valid():
        login(request, form.user)
        if form.device is not None:
            otp_login(request, form.device)
        return redirect(_next(request))
    if request.method == "GET" and current_member(request) is not None:
        return redirect(_next(request))
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    context = {"form": form, "title": "Sign in", "next": wanted}
    return TemplateResponse(request, "portal/login.html", context)


def _next(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted.startswith("/portal/") and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return "portal:dashboard"


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("portal:login")


@require_POST
def account_switch(request: HttpRequest) -> HttpResponse:
    """Work in another of the user's accounts (only one they are a member of)."""
    member = current_member(request)
    if member is None:
        return redirect("portal:login")
    wanted = request.POST.get("account", "")
    for membership in memberships(member.user):
        if str(membership.account_id) == wanted:
            request.session[SESSION_ACCOUNT] = membership.account_id
            messages.info(request, f"Working in {membership.account.name}.")
            break
    else:
        messages.error(request, "You are not a member of that account.")
    return redirect("portal:dashboard")


def invite(request: HttpRequest, secret: str) -> HttpResponse:
    """An invitation's link: a new person sets a name and password; someone who already has
    a user signs in as the invited address first, then accepts."""
    invitation = invitation_find(secret)
    if invitation is None:
        invalid = {"title": "Invitation not valid"}
        return TemplateResponse(request, "portal/invite_invalid.html", invalid, status=404)
    user: Any = request.user
    existing = _user_of(invitation)
    context: dict[str, Any] = {"invitation": invitation, "title": "Join " + invitation.account.name}
    if existing is None:
        return _sign_up(request, secret, invitation, context)
    if not user.is_authenticated or user.pk != existing.pk:
        context["sign_in_first"] = True
        return TemplateResponse(request, "portal/invite.html", context)
    if request.method == "POST":
        return _accept(request, secret, user)
    return TemplateResponse(request, "portal/invite.html", context)


def _user_of(invitation: Invitation) -> Any:
    return get_user_model().objects.filter(username__iexact=invitation.email).first()


def _sign_up(
    request: HttpRequest, secret: str, invitation: Invitation, context: dict[str, Any]
) -> HttpResponse:
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                user = member_user_create(
                    email=invitation.email, password=form.cleaned_data["password1"]
                )
                user.first_name = form.cleaned_data["first_name"]
                user.last_name = form.cleaned_data["last_name"]
                user.save(update_fields=["first_name", "last_name"])
                member = invitation_accept(secret=secret, user=user, request=request)
        except MemberError as error:
            form.add_error(None, str(error))
        else:
            login(request, user, backend=_BACKEND)
            request.session[SESSION_ACCOUNT] = member.account_id
            messages.success(request, f"Welcome to {member.account.name}.")
            return redirect("portal:dashboard")
    return TemplateResponse(request, "portal/invite.html", {**context, "form": form})


def _accept(request: HttpRequest, secret: str, user: Any) -> HttpResponse:
    try:
        member = invitation_accept(secret=secret, user=user, request=request)
    except MemberError as error:
        messages.error(request, str(error))
        return redirect("portal:dashboard")
    request.session[SESSION_ACCOUNT] = member.account_id
    messages.success(request, f"You joined {member.account.name}.")
    return redirect("portal:dashboard")
