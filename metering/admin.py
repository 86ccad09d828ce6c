"""The console's pages for the usage ledger, the meter's quarantine and the energy telemetry:
read-only, since the meter and the energy jobs write them, except a backend's configured
energy model and the release of a quarantined event into the ledger."""

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.forms import ModelForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from audit.admin_base import AuditedAdmin, ReadOnlyAdmin
from customers.models import Account, ApiKey
from metering.events import request_id_parse, request_ref
from metering.models import (
    EnergyCalibration,
    EnergyInterval,
    GpuSample,
    QuarantinedEvent,
    UsageRecord,
)
from metering.services import ReleaseError, quarantined_event_release

# Response ids (`chatcmpl-…`, `cmpl-…`) are the backend's own, not derived from the request's.
_RESPONSE_ID = re.compile(r"(?:chatcmpl|cmpl|resp)[-_]\S+")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin[UsageRecord]):
    """The ledger, newest first. A search for a request id as the client quotes it finds the
    request by its key (the primary key index); any other text is matched against the model,
    the backend and the account's name. Records name their account and key by plain ids (the
    ledger outlives what it names, so no foreign keys and no `list_select_related`): the page
    reads the names with the records, in the same query, and shows `#id` for one deleted."""

    list_display = [
        "started_at",
        "request_ref",
        "account",
        "api_key",
        "tier",
        "model",
        "backend",
        "prompt_tokens",
        "completion_tokens",
        "energy_joules",
        "outcome",
        "tokens_estimated",
    ]
    list_filter = ["outcome", "tier", "streamed", "tokens_estimated"]
    search_fields = ["model", "backend"]
    search_help_text = (
        "A request id as the client sees it (the x-request-id header, req_…) or its UUID; "
        "else a model, backend or account name."
    )
    readonly_fields = ["request_ref", "account", "api_key"]
    ordering = ["-started_at"]
    date_hierarchy = "started_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        accounts = Account.objects.filter(pk=OuterRef("account_id"))
        keys = ApiKey.objects.filter(pk=OuterRef("api_key_id"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                account_name=Subquery(accounts.values("name")[:1]),
                key_name=Subquery(keys.values("name")[:1]),
                key_ref=Subquery(keys.values("key_id")[:1]),
            )
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord], search_term: str
    ) -> tuple[QuerySet[UsageRecord], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        request_id = request_id_parse(term)
        if request_id is not None:
            return queryset.filter(request_id=request_id), False
        if _RESPONSE_ID.fullmatch(term):
            messages.info(
                request,
                f"{term} is a response id, which the backend chose; search by the request id "
                "the client received in the x-request-id header (req_…).",
            )
        found, duplicates = super().get_search_results(request, queryset, term)
        named = Account.objects.filter(name__icontains=term).values("pk")
        return found | queryset.filter(account_id__in=named), duplicates

    @admin.display(description="request id", ordering="request_id")
    def request_ref(self, obj: UsageRecord) -> str:
        """The id as the client saw it in x-request-id."""
        return request_ref(obj.request_id)

    @admin.display(description="account", ordering="account_name")
    def account(self, obj: UsageRecord) -> str:
        name = getattr(obj, "account_name", None)
        if name is None:
            return f"#{obj.account_id} (deleted)"
        url = reverse("admin:customers_account_change", args=[obj.account_id])
        return format_html('<a href="{}">{}</a>', url, name)

    @admin.display(description="key", ordering="key_name")
    def api_key(self, obj: UsageRecord) -> str:
        ref = getattr(obj, "key_ref", None)
        if ref is None:
            return f"#{obj.api_key_id} (deleted)"
        url = reverse("admin:customers_apikey_change", args=[obj.api_key_id])
        name = getattr(obj, "key_name", "")
        return format_html('<a href="{}">{} (tf_{}_…)</a>', url, name, ref)


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(ReadOnlyAdmin[QuarantinedEvent]):
    """Usage events the meter could not store, kept whole with the reason, for staff to
    investigate (the request they belong to has no usage record until one is written).
    Staff who may change them can release one into the ledger as it was recorded
    (metering.services.quarantined_event_release), e.g. after raising a token limit it broke."""

    list_display = ["quarantined_at", "request_id", "stream_id", "error"]
    search_fields = ["request_id", "stream_id", "error"]
    search_help_text = (
        "A request id as the client sees it (req_…) or its UUID, a stream id or an error."
    )
    date_hierarchy = "quarantined_at"
    actions = ["release_events"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[QuarantinedEvent], search_term: str
    ) -> tuple[QuerySet[QuarantinedEvent], bool]:
        # The event keeps the request id as the gateway wrote it: the UUID with dashes.
        request_id = request_id_parse(search_term)
        if request_id is not None:
            return queryset.filter(request_id__in=[str(request_id), request_id.hex]), False
        return super().get_search_results(request, queryset, search_term)

    @admin.action(
        description="Release the selected events into the ledger as recorded (billed on the "
        "next invoice)",
        permissions=["release"],
    )
    def release_events(self, request: HttpRequest, queryset: QuerySet[QuarantinedEvent]) -> None:
        released = 0
        for event in queryset:
            try:
                released += quarantined_event_release(
                    event_id=event.pk, actor=request.user, request=request
                )
            except ReleaseError as exc:
                messages.error(request, f"Event {event.stream_id} was not released: {exc}.")
        if released:
            messages.success(request, f"{released} event(s) stored in the usage ledger.")

    def has_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("metering.change_quarantinedevent")


@admin.register(GpuSample)
class GpuSampleAdmin(ReadOnlyAdmin[GpuSample]):
    list_display = ["backend", "gpu_index", "gpu_uuid", "scraped_at", "power_w", "energy_mj"]
    list_filter = ["backend"]
    search_fields = ["backend", "gpu_uuid"]
    date_hierarchy = "scraped_at"


@admin.register(EnergyInterval)
class EnergyIntervalAdmin(ReadOnlyAdmin[EnergyInterval]):
    list_display = [
        "backend",
        "started_at",
        "ended_at",
        "energy_j",
        "idle_j",
        "attributed_j",
        "requests",
        "counter_reset",
        "attributed_at",
    ]
    list_filter = ["backend", "counter_reset", ("attributed_at", admin.EmptyFieldListFilter)]
    date_hierarchy = "started_at"


class CalibrationForm(forms.ModelForm[EnergyCalibration]):
    class Meta:
        model = EnergyCalibration
        fields = [
            "backend",
            "idle_watts",
            "prefill_j_per_token",
            "prefill_j_per_request",
            "decode_watts",
            "decode_j_per_token",
            "ttft_seconds",
            "ttft_seconds_per_token",
            "prefill_seconds",
            "decode_step_seconds",
            "decode_step_seconds_per_sequence",
        ]

        help_texts = {
            "decode_watts": "Watts while 1, 2, 4, 8, ... sequences decode together, "
            "comma-separated (up to 256 sequences): linear in between, flat after the last.",
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        scalars = [v for name, v in cleaned.items() if name not in ("backend", "decode_watts")]
        numbers = [*scalars, *(cleaned.get("decode_watts") or [])]
        if any(value is not None and value < 0 for value in numbers):
            raise forms.ValidationError("Coefficients cannot be negative.")
        return cleaned


@admin.register(EnergyCalibration)
class EnergyCalibrationAdmin(AuditedAdmin[EnergyCalibration]):
    """Fitted models are listed as the calibration job wrote them. Staff may add a configured
    model (e.g. from a lab measurement): it wins until deleted (docs/energy.md)."""

    list_display = [
        "backend",
        "source",
        "fitted_at",
        "idle_watts",
        "prefill_j_per_token",
        "decode_watts",
        "decode_j_per_token",
        "r_squared",
    ]
    list_filter = ["backend", "source"]
    form = CalibrationForm

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self,
        request: HttpRequest,
        obj: EnergyCalibration,
        form: ModelForm[EnergyCalibration],
        change: bool,
    ) -> None:
        obj.source = EnergyCalibration.Source.CONFIGURED
        obj.fitted_at = timezone.now()
        super().save_model(request, obj, form, change)
