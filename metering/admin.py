"""The console's pages for the usage ledger, the meter's quarantine and the energy telemetry:
read-only, since the meter and the energy jobs write them, except a backend's configured
energy model and the release of a quarantined event into the ledger."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from audit.admin_base import AuditedAdmin, ReadOnlyAdmin
from metering.models import (
    EnergyCalibration,
    EnergyInterval,
    GpuSample,
    QuarantinedEvent,
    UsageRecord,
)
from metering.services import ReleaseError, quarantined_event_release


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin[UsageRecord]):
    list_display = [
        "request_id",
        "started_at",
        "account_id",
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
    search_fields = ["request_id", "model", "backend"]
    date_hierarchy = "started_at"


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(ReadOnlyAdmin[QuarantinedEvent]):
    """Usage events the meter could not store, kept whole with the reason, for staff to
    investigate (the request they belong to has no usage record until one is written).
    Staff who may change them can release one into the ledger as it was recorded
    (metering.services.quarantined_event_release), e.g. after raising a token limit it broke."""

    list_display = ["quarantined_at", "request_id", "stream_id", "error"]
    search_fields = ["request_id", "stream_id", "error"]
    date_hierarchy = "quarantined_at"
    actions = ["release_events"]

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
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        numbers = [value for name, value in cleaned.items() if name != "backend"]
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
