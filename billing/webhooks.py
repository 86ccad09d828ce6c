"""Stripe's webhook endpoint: POST /billing/stripe/webhook.

Only events signed with STRIPE["WEBHOOK_SECRET"] and at most five minutes old are accepted
(stripe.Webhook.construct_event: HMAC-SHA256 of "<timestamp>.<body>"); anything else is a 400
and changes nothing. An event already seen answers 200 so Stripe stops sending it; a failure
while applying one answers 500 and Stripe sends it again later.
"""

import json
import logging

import stripe
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.stripe_events import stripe_event_apply

log = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    secret = settings.STRIPE.webhook_secret
    if not secret:
        # Without a secret anyone could post events; Stripe retries until one is set.
        log.error("stripe webhook refused: STRIPE_WEBHOOK_SECRET is not set")
        return HttpResponse(status=503)
    signature = request.headers.get("Stripe-Signature")
    try:
        stripe.Webhook.construct_event(request.body, signature, secret)
    except (ValueError, stripe.SignatureVerificationError):
        log.warning("stripe webhook refused: bad signature or payload")
        return JsonResponse({"error": "bad signature or payload"}, status=400)
    applied = stripe_event_apply(event=json.loads(request.body))
    return JsonResponse({"received": True, "duplicate": not applied})
