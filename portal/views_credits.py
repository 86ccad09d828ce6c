"""Prepaid credits: the balance, grants and ledger, buying credits through Stripe Checkout,
and the automatic top-up. Owners and billing members (`invoices.read` to look,
`billing.write` to buy or change the top-up)."""

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.checkout import (
    CheckoutError,
    checkout_start,
    credit_available,
    topup_configure,
    topup_last_failure,
    topup_settings,
)
from billing.models import CreditGrant
from billing.selectors import credit_entries, credit_grants
from customers.members import may
from customers.models import Member
from portal.access import member_required
from portal.forms_credits import BuyCreditsForm, TopupForm

PAGE_SIZE = 50


@member_required("invoices.read")
def credits(request: HttpRequest, member: Member) -> HttpResponse:
    return _page(request, member)


def _page(
    request: HttpRequest,
    member: Member,
    *,
    buy: BuyCreditsForm | None = None,
    topup: TopupForm | None = None,
) -> HttpResponse:
    account = member.account
    current = topup_settings(account)
    pages = Paginator(credit_entries(account), PAGE_SIZE)
    context: dict[str, Any] = {
        "member": member,
        "title": "Credits",
        "currency": settings.BILLING.currency,
        "balance": credit_available(account),
        "prepaid": account.billing_mode == account.Billing.PREPAID,
        "grants": credit_grants(account),
        "page": pages.get_page(request.GET.get("page")),
        "topup": current,
        "topup_failure": topup_last_failure(account),
        "can_write": may(member, "billing.write"),
        "buy_form": buy or BuyCreditsForm(initial={"attempt": uuid.uuid4()}),
        "topup_form": topup or TopupForm(initial=TopupForm.initial_of(current)),
    }
    return TemplateResponse(request, "portal/credits.html", context)


@require_POST
@member_required("billing.write")
def credits_buy(request: HttpRequest, member: Member) -> HttpResponseBase:
    """Off to Stripe's page to pay; back to `credits_success` or `credits_cancel`."""
    form = BuyCreditsForm(request.POST)
    if form.is_valid():
        success = request.build_absolute_uri(reverse("portal:credits-success"))
        try:
            url = checkout_start(
                member.account,
                form.cleaned_data["amount"],
                success_url=success + "?session_id={CHECKOUT_SESSION_ID}",
                cancel_url=request.build_absolute_uri(reverse("portal:credits-cancel")),
                actor=member.user,
                request_key=str(form.cleaned_data["attempt"]),
            )
        except CheckoutError as error:
            form.add_error(None, str(error))
        else:
            return redirect(url)
    return _page(request, member, buy=form)


@member_required("invoices.read")
def credits_success(request: HttpRequest, member: Member) -> HttpResponse:
    """Back from paying. The credits arrive with Stripe's confirmation, usually within
    seconds; the page says whether this account has them yet."""
    session_id = request.GET.get("session_id", "")
    grant = CreditGrant.objects.filter(account_id=member.account_id, reference=session_id).first()
    context = {
        "member": member,
        "title": "Thank you",
        "grant": grant if session_id else None,
        "currency": settings.BILLING.currency,
    }
    return TemplateResponse(request, "portal/credits_success.html", context)


@member_required("invoices.read")
def credits_cancel(request: HttpRequest, member: Member) -> HttpResponseBase:
    messages.info(request, "No payment was taken.")
    return redirect("portal:credits")


@require_POST
@member_required("billing.write")
def credits_topup(request: HttpRequest, member: Member) -> HttpResponseBase:
    form = TopupForm(request.POST)
    if not form.is_valid():
        return _page(request, member, topup=form)
    try:
        topup_configure(
            account=member.account,
            wanted=form.cleaned_data["wanted"],
            actor=member.user,
            request=request,
        )
    except CheckoutError as error:
        form.add_error(None, str(error))
        return _page(request, member, topup=form)
    messages.success(request, "Automatic top-up saved.")
    return redirect("portal:credits")
