"""Members and invitations of the account, and each member's own profile (password,
two-factor)."""

import base64
import io
from typing import Any

import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.forms import PasswordChangeForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_POST
from django_otp import devices_for_user
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import audit_record
from customers.mail import invitation_send
from customers.members import (
    MemberError,
    Role,
    invitation_create,
    invitation_revoke,
    member_remove,
    member_update,
)
from customers.models import Invitation, Member
from portal.access import member_required
from portal.forms import CodeForm, InviteForm, MemberForm


def _member(member: Member, member_id: int) -> Member:
    return get_object_or_404(
        Member.objects.select_related("user"), pk=member_id, account_id=member.account_id
    )


def _invitation(member: Member, invitation_id: int) -> Invitation:
    return get_object_or_404(Invitation, pk=invitation_id, account_id=member.account_id)


@member_required("members.read")
def members(request: HttpRequest, member: Member) -> HttpResponse:
    rows = (
        Member.objects.filter(account_id=member.account_id)
        .select_related("user")
        .prefetch_related("projects")
    )
    pending = Invitation.objects.filter(
        account_id=member.account_id, accepted_at=None, revoked_at=None
    ).prefetch_related("projects")
    context = {
        "member": member,
        "title": "Members",
        "members": rows,
        "invitations": pending,
        "can_write": member.role in (Role.OWNER, Role.ADMIN),
    }
    return TemplateResponse(request, "portal/members.html", context)


@member_required("members.write")
def member_invite(request: HttpRequest, member: Member) -> HttpResponse:
    form = InviteForm(request.POST or None, member=member)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            sent = invitation_create(
                account=member.account,
                email=data["email"],
                role=data["role"],
                projects=data["projects"] if data["role"] == Role.DEVELOPER else (),
                actor=member.user,
                request=request,
            )
        except MemberError as error:
            form.add_error(None, str(error))
        else:
            invitation_send(sent, request=request)
            messages.success(request, f"Invitation sent to {sent.invitation.email}.")
            return redirect("portal:members")
    context = {"member": member, "title": "Invite a member", "form": form}
    return TemplateResponse(request, "portal/member_invite.html", context)


@member_required("members.write")
def member_edit(request: HttpRequest, member: Member, member_id: int) -> HttpResponse:
    other = _member(member, member_id)
    initial = {"role": other.role, "projects": list(other.projects.all())}
    form = MemberForm(request.POST or None, member=member, initial=initial)
    if request.method == "POST" and form.is_valid():
        role = form.cleaned_data["role"]
        projects = form.cleaned_data["projects"] if role == Role.DEVELOPER else []
        try:
            member_update(
                member=other, role=role, projects=projects, actor=member.user, request=request
            )
        except MemberError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"{other.user.email} is now {role}.")
            return redirect("portal:members")
    context = {"member": member, "title": f"Change {other.user.email}", "form": form}
    return TemplateResponse(request, "portal/member_edit.html", {**context, "other": other})


@member_required("members.write")
def member_remove_confirm(request: HttpRequest, member: Member, member_id: int) -> HttpResponse:
    """GET asks to confirm; POST removes (their keys are revoked, their sessions end)."""
    other = _member(member, member_id)
    if request.method == "POST":
        try:
            member_remove(member=other, actor=member.user, request=request)
        except MemberError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"{other.user.email} removed; their keys are revoked.")
            if other.pk == member.pk:
                return redirect("portal:login")
        return redirect("portal:members")
    keys = other.api_keys.filter(revoked_at=None).order_by("name")
    context = {"member": member, "title": f"Remove {other.user.email}?", "other": other}
    return TemplateResponse(request, "portal/member_remove.html", {**context, "keys": keys})


@require_POST
@member_required("members.write")
def invitation_revoke_view(
    request: HttpRequest, member: Member, invitation_id: int
) -> HttpResponse:
    invitation = _invitation(member, invitation_id)
    invitation_revoke(invitation=invitation, actor=member.user, request=request)
    messages.success(request, f"The invitation of {invitation.email} is revoked.")
    return redirect("portal:members")


@member_required()
def profile(request: HttpRequest, member: Member) -> HttpResponse:
    """Change the password; see whether two-factor is on."""
    user: Any = request.user
    form = PasswordChangeForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        update_session_auth_hash(request, form.user)
        _audit_self(request, member, "password_change")
        messages.success(request, "Your password is changed.")
        return redirect("portal:profile")
    context = {
        "member": member,
        "title": "Your profile",
        "form": form,
        "two_factor": any(True for _ in devices_for_user(user, confirmed=True)),
    }
    return TemplateResponse(request, "portal/profile.html", context)


@member_required()
def two_factor(request: HttpRequest, member: Member) -> HttpResponse:
    """Set up an authenticator: its QR code and secret, confirmed by a first code."""
    user: Any = request.user
    if any(True for _ in devices_for_user(user, confirmed=True)):
        return redirect("portal:profile")
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if device.verify_token(form.cleaned_data["token"].strip()):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            otp_login(request, device)
            _audit_self(request, member, "two_factor_on")
            messages.success(request, "Two-factor authentication is on.")
            return redirect("portal:profile")
        form.add_error("token", "That code is not valid; try the next one.")
    context = {
        "member": member,
        "title": "Two-factor authentication",
        "form": form,
        "qr_svg": _qr_svg(device.config_url),
        "secret": base64.b32encode(device.bin_key).decode(),
    }
    return TemplateResponse(request, "portal/two_factor.html", context)


@require_POST
@member_required()
def two_factor_off(request: HttpRequest, member: Member) -> HttpResponse:
    """Remove the authenticator: asks for a current code, so a borrowed session cannot."""
    user: Any = request.user
    devices = list(devices_for_user(user, confirmed=True))
    token = str(request.POST.get("token", "")).strip()
    if not any(device.verify_token(token) for device in devices):
        messages.error(request, "Enter a current code from your authenticator to turn it off.")
        return redirect("portal:profile")
    TOTPDevice.objects.filter(user=user).delete()
    _audit_self(request, member, "two_factor_off")
    messages.success(request, "Two-factor authentication is off.")
    return redirect("portal:profile")


def _audit_self(request: HttpRequest, member: Member, action: str) -> None:
    """A member's change to their own sign-in, filed under the account they acted from."""
    audit_record(
        actor=member.user,
        action=action,
        obj_type="auth.user",
        obj_id=member.user_id,
        before=None,
        after=None,
        request=request,
        account_id=member.account_id,
    )


def _qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=6)
    buffer = io.BytesIO()
    image.save(buffer)
    return buffer.getvalue().decode()
