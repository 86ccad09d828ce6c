"""Webhooks: the account's endpoints, their signing secrets and their deliveries (owners and
admins: "webhooks.write").

Endpoints and deliveries named in URLs are looked up inside the member's account, so another
account's id is a 404. A secret is drawn only in the answer to a POST (creating, rotating,
or revealing it, each audited) and never cached or put in the session.
"""

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_POST

from customers.models import Member, WebhookDelivery, WebhookEndpoint, WebhookEvent
from customers.webhooks import (
    WebhookError,
    webhook_delivery_replay,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_reveal_secret,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_update,
)
from portal.access import member_required

RECENT_DELIVERIES = 50


class EndpointForm(forms.Form):
    url = forms.URLField(
        label="URL",
        max_length=500,
        assume_scheme="https",
        help_text="An https address of yours; events are POSTed to it, signed.",
    )
    description = forms.CharField(max_length=200, required=False)
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.Type.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event.",
    )
    enabled = forms.BooleanField(required=False, initial=True)


def _endpoint(member: Member, endpoint_id: int) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint, pk=endpoint_id, account_id=member.account_id)


@member_required("webhooks.write")
def webhooks(request: HttpRequest, member: Member) -> HttpResponse:
    endpoints = WebhookEndpoint.objects.filter(account_id=member.account_id).order_by("pk")
    deliveries = (
        WebhookDelivery.objects.filter(endpoint__account_id=member.account_id)
        .select_related("event", "endpoint")
        .order_by("-created_at", "-pk")[:RECENT_DELIVERIES]
    )
    context = {
        "member": member,
        "title": "Webhooks",
        "endpoints": endpoints,
        "deliveries": deliveries,
    }
    return TemplateResponse(request, "portal/webhooks.html", context)


@member_required("webhooks.write")
def webhook_new(request: HttpRequest, member: Member) -> HttpResponse:
    form = EndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            endpoint = webhook_endpoint_create(
                account=member.account, **form.cleaned_data, actor=member.user, request=request
            )
        except WebhookError as exc:
            form.add_error(None, str(exc))
        else:
            return _secret_page(request, member, endpoint, endpoint.secret, "created")
    return _form_page(request, member, form, None)


@member_required("webhooks.write")
def webhook_edit(request: HttpRequest, member: Member, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(member, endpoint_id)
    initial = {name: getattr(endpoint, name) for name in EndpointForm.base_fields}
    form = EndpointForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            webhook_endpoint_update(
                endpoint=endpoint, data=form.cleaned_data, actor=member.user, request=request
            )
        except WebhookError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Endpoint {form.cleaned_data['url']} saved.")
            return redirect("portal:webhooks")
    return _form_page(request, member, form, endpoint)


def _form_page(
    request: HttpRequest, member: Member, form: EndpointForm, endpoint: WebhookEndpoint | None
) -> HttpResponse:
    title = f"Endpoint {endpoint.url}" if endpoint else "New webhook endpoint"
    context = {"member": member, "title": title, "form": form, "endpoint": endpoint}
    return TemplateResponse(request, "portal/webhook_form.html", context)


@require_POST
@member_required("webhooks.write")
def webhook_secret(request: HttpRequest, member: Member, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(member, endpoint_id)
    secret = webhook_endpoint_reveal_secret(endpoint=endpoint, actor=member.user, request=request)
    return _secret_page(request, member, endpoint, secret, "revealed")


@require_POST
@member_required("webhooks.write")
def webhook_rotate(request: HttpRequest, member: Member, endpoint_id: int) -> HttpResponse:
    endpoint = webhook_endpoint_rotate_secret(
        endpoint=_endpoint(member, endpoint_id), actor=member.user, request=request
    )
    return _secret_page(request, member, endpoint, endpoint.secret, "rotated")


def _secret_page(
    request: HttpRequest, member: Member, endpoint: WebhookEndpoint, secret: str, why: str
) -> HttpResponse:
    context = {
        "member": member,
        "title": "Signing secret",
        "endpoint": endpoint,
        "secret": secret,
        "why": why,
    }
    response = TemplateResponse(request, "portal/webhook_secret.html", context)
    response["Cache-Control"] = "no-store"
    return response


@member_required("webhooks.write")
def webhook_delete(request: HttpRequest, member: Member, endpoint_id: int) -> HttpResponse:
    """GET asks to confirm; POST deletes the endpoint and its deliveries."""
    endpoint = _endpoint(member, endpoint_id)
    if request.method == "POST":
        webhook_endpoint_delete(endpoint=endpoint, actor=member.user, request=request)
        messages.success(request, f"Endpoint {endpoint.url} deleted.")
        return redirect("portal:webhooks")
    pending = endpoint.deliveries.filter(status=WebhookDelivery.Status.PENDING).count()
    context = {
        "member": member,
        "title": f"Delete {endpoint.url}?",
        "endpoint": endpoint,
        "pending": pending,
    }
    return TemplateResponse(request, "portal/webhook_delete.html", context)


@require_POST
@member_required("webhooks.write")
def webhook_replay(request: HttpRequest, member: Member, delivery_id: int) -> HttpResponse:
    delivery = get_object_or_404(
        WebhookDelivery.objects.select_related("event"),
        pk=delivery_id,
        endpoint__account_id=member.account_id,
    )
    webhook_delivery_replay(delivery=delivery, actor=member.user, request=request)
    messages.success(request, f"{delivery.event.public_id} will be sent again in a moment.")
    return redirect("portal:webhooks")
