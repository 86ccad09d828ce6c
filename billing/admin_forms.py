"""Forms of billing's console pages: a cost model's backend is chosen from the fleet's; the
one page every form of billing's own (close a month, credit note, credit grants) is shown on."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from billing.models import CostModel
from fleet.models import Backend


class CostModelForm(forms.ModelForm[CostModel]):
    """A cost model for a backend of the fleet; an old one keeps a backend since removed."""

    backend = forms.ChoiceField()

    class Meta:
        model = CostModel
        fields = [
            "backend",
            "effective_from",
            "currency",
            "electricity_per_kwh",
            "pue",
            "gpu_cost_per_hour",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(Backend.objects.order_by("name").values_list("name", flat=True))
        choices = [("", "---------"), *((name, name) for name in names)]
        current = self.instance.backend
        if current and current not in names:
            choices.append((current, f"{current} (no longer in the fleet)"))
        field: Any = self.fields["backend"]
        field.choices = choices
        field.error_messages["invalid_choice"] = (
            f"“%(value)s” is not a backend of the fleet; the backends are "
            f"{', '.join(names) or 'none yet'}."
        )


def form_page(
    model_admin: "admin.ModelAdmin[Any]", request: HttpRequest, title: str, form: forms.Form
) -> HttpResponse:
    """A form of `model_admin`'s own, on the console's page for billing's forms."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "form": form,
        "opts": model_admin.model._meta,
    }
    return TemplateResponse(request, "billing/admin_form.html", context)
