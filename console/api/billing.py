# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""Staff endpoints for money: price books with their prices and plans, invoices.

A price book is immutable once in force (catalogue/services.py refuses with 400); a
book is created whole, with its prices and plans, and edited only while it is a draft.
"""

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from billing import closing as invoices
from billing.models import Invoice, InvoiceLine
from billing.money import minor_text
from billing.services import CreditTooLarge, InvoiceError, LateUsage
from catalogue import services as pricing
from catalogue.models import PlanPrice, Price, PriceBook
from console.api.common import actor
from console.filters import InvoiceFilter, PlanPriceFilter, PriceBookFilter, PriceFilter
from console.models import Scope
from customers.models import Tier

_MONEY = {"min_value": 0}


def _tier_exists(slug: str) -> str:
    if not Tier.objects.filter(slug=slug).exists():
        raise serializers.ValidationError(f"There is no tier {slug!r}.")
    return slug


class PriceSerializer(serializers.ModelSerializer[Price]):
    class Meta:
        model = Price
        fields = [
            "id",
            "price_book",
            "tier",
            "model",
            "input_per_million",
            "cached_input_per_million",
            "output_per_million",
            "reasoning_per_million",
            "request_fee",
        ]
        extra_kwargs = {
            "input_per_million": _MONEY,
            "cached_input_per_million": _MONEY,
            "output_per_million": _MONEY,
            "reasoning_per_million": _MONEY,
            "request_fee": _MONEY,
        }

    def validate_tier(self, value: str) -> str:
        return _tier_exists(value)


class PlanPriceSerializer(serializers.ModelSerializer[PlanPrice]):
    class Meta:
        model = PlanPrice
        fields = ["id", "price_book", "tier", "monthly_fee", "included_tokens"]
        extra_kwargs = {"monthly_fee": _MONEY, "included_tokens": {"min_value": 0}}

    def validate_tier(self, value: str) -> str:
        return _tier_exists(value)


class BookPriceSerializer(PriceSerializer):
    """A price inside its book's creation request (the book is the one being created)."""

    class Meta(PriceSerializer.Meta):
        fields = [name for name in PriceSerializer.Meta.fields if name != "price_book"]
        # The book does not exist yet: its (book, tier, model) uniqueness is checked below.
        validators: list[Any] = []


class BookPlanSerializer(PlanPriceSerializer):
    class Meta(PlanPriceSerializer.Meta):
        fields = [name for name in PlanPriceSerializer.Meta.fields if name != "price_book"]
        validators: list[Any] = []


class PriceBookSerializer(serializers.ModelSerializer[PriceBook]):
    prices = BookPriceSerializer(many=True, required=False)
    plans = BookPlanSerializer(many=True, required=False)
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = PriceBook
        fields = [
            "id",
            "name",
            "currency",
            "effective_from",
            "in_force",
            "created_at",
            "prices",
            "plans",
        ]
        read_only_fields = ["created_at"]
        extra_kwargs = {"currency": {"min_length": 3}}

    def get_in_force(self, book: PriceBook) -> bool:
        return book.effective_from <= timezone.now()

    def validate_currency(self, value: str) -> str:
        if not (value.isascii() and value.isalpha()):
            raise serializers.ValidationError("A currency is a three-letter ISO 4217 code.")
        return value.upper()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is not None and ("prices" in attrs or "plans" in attrs):
            raise serializers.ValidationError(
                "A book's prices and plans change at /api/v1/prices/ and /api/v1/plan-prices/."
            )
        _unique(attrs.get("prices", []), ("tier", "model"), "prices", {"model": "*"})
        _unique(attrs.get("plans", []), ("tier",), "plans", {})
        return attrs


def _unique(
    rows: list[dict[str, Any]], keys: tuple[str, ...], field: str, defaults: dict[str, Any]
) -> None:
    seen = set()
    for row in rows:
        key = tuple(row.get(name, defaults.get(name)) for name in keys)
        if key in seen:
            raise serializers.ValidationError({field: f"Two rows for {', '.join(map(str, key))}."})
        seen.add(key)


class PriceBookViewSet(viewsets.ModelViewSet[PriceBook]):
    """Versions of the prices. Editing or deleting a book in force is refused (400)."""

    queryset = PriceBook.objects.prefetch_related("prices", "plans").order_by("-effective_from")
    serializer_class = PriceBookSerializer
    filterset_class = PriceBookFilter
    token_scope = Scope.BILLING

    def perform_create(self, serializer: PriceBookSerializer) -> None:
        data = dict(serializer.validated_data)
        prices, plans = data.pop("prices", []), data.pop("plans", [])
        serializer.instance = pricing.price_book_create(
            actor=actor(self.request), data=data, prices=prices, plans=plans, request=self.request
        )

    def perform_update(self, serializer: PriceBookSerializer) -> None:
        assert serializer.instance is not None
        serializer.instance = pricing.price_book_update(
            actor=actor(self.request),
            book=serializer.instance,
            data=serializer.validated_data,
            request=self.request,
        )

    def perform_destroy(self, instance: PriceBook) -> None:
        pricing.price_book_delete(actor=actor(self.request), book=instance, request=self.request)


class _BookItemViewSet(viewsets.ModelViewSet[Any]):
    """Prices or plan prices; changed only while their book is not in force."""

    token_scope = Scope.BILLING

    def perform_create(self, serializer: serializers.BaseSerializer[Any]) -> None:
        serializer.instance = pricing.book_item_create(
            actor=actor(self.request),
            model=self.queryset.model,
            data=serializer.validated_data,
            request=self.request,
        )

    def perform_update(self, serializer: serializers.BaseSerializer[Any]) -> None:
        serializer.instance = pricing.book_item_update(
            actor=actor(self.request),
            item=serializer.instance,
            data=serializer.validated_data,
            request=self.request,
        )

    def perform_destroy(self, instance: Price | PlanPrice) -> None:
        pricing.book_item_delete(actor=actor(self.request), item=instance, request=self.request)


class PriceViewSet(_BookItemViewSet):
    queryset = Price.objects.order_by("price_book_id", "tier", "model")
    serializer_class = PriceSerializer
    filterset_class = PriceFilter


class PlanPriceViewSet(_BookItemViewSet):
    queryset = PlanPrice.objects.order_by("price_book_id", "tier")
    serializer_class = PlanPriceSerializer
    filterset_class = PlanPriceFilter


@extend_schema_field({"type": "string", "example": "$13.41"})
class MoneyTextField(serializers.Field):
    """An amount in minor units as a person reads it ("$13.41"), beside the exact fields
    (which stay as they are for programs): `minor` names the field, `currency` the path to
    the currency ("invoice.currency" for a line)."""

    def __init__(self, minor: str, currency: str, **kwargs: Any) -> None:
        self.minor, self.currency_path = minor, currency.split(".")
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, value: Any) -> str:
        currency = value
        for name in self.currency_path:
            currency = getattr(currency, name)
        return minor_text(getattr(value, self.minor), str(currency))


class InvoiceLineSerializer(serializers.ModelSerializer[InvoiceLine]):
    amount_display = MoneyTextField(
        "amount_minor",
        "invoice.currency",
        help_text="`amount_minor` as people read it, in the invoice's currency (for display).",
    )
    project_name = serializers.CharField(
        source="project.name",
        read_only=True,
        allow_null=True,
        help_text="The project whose usage the line bills; null for the plan fee, amounts "
        "credited and lines from before projects.",
    )

    class Meta:
        model = InvoiceLine
        fields = [
            "id",
            "project",
            "project_name",
            "item",
            "tier",
            "model",
            "price_book",
            "quantity",
            "unit_price",
            "amount",
            "amount_minor",
            "amount_display",
            "usage_from",
            "usage_to",
        ]


class InvoiceSerializer(serializers.ModelSerializer[Invoice]):
    total_display = MoneyTextField(
        "total_minor",
        "currency",
        help_text="`total_minor` as people read it, by currency (for display; `amount` is the "
        "exact unrounded sum it rounds).",
    )

    class Meta:
        model = Invoice
        fields = [
            "id",
            "account",
            "kind",
            "corrects",
            "number",
            "status",
            "period_start",
            "period_end",
            "currency",
            "amount",
            "total_minor",
            "total_display",
            "created_at",
            "finalised_at",
            "memo",
            "payment",
            "paid_at",
        ]
        read_only_fields = fields


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]
        read_only_fields = fields


class MonthCloseSerializer(serializers.Serializer[Any]):
    period_start = serializers.DateTimeField(
        help_text="Any instant of the month (UTC) to close; its start is used."
    )


class MonthClosedSerializer(serializers.Serializer[Any]):
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    finalised = serializers.IntegerField(help_text="Invoices finalised now (0: closed before).")
    unpriced = serializers.ListField(
        child=serializers.DictField(), help_text="Usage billed at zero for want of a price."
    )
    late = serializers.ListField(
        child=serializers.DictField(),
        help_text="Usage of earlier months that arrived after they closed, billed now as "
        "prior-period lines.",
    )
    late_pending = serializers.ListField(
        child=serializers.DictField(),
        help_text="Month closed before: usage of closed months that arrived since the last "
        "close, which the next close bills.",
    )


class CreditNoteSerializer(serializers.Serializer[Any]):
    """Either `lines` (ids of the invoice's lines, reversed whole) or `amount_minor`."""

    memo = serializers.CharField(max_length=2000)
    lines = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        allow_empty=False,
        max_length=10_000,
    )
    amount_minor = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**62,
        help_text="The amount to credit, positive, in the invoice's minor units (450 = $4.50); "
        "at most what is left to credit on the invoice.",
        error_messages={
            "min_value": "Enter the amount to credit as a positive number of minor units "
            "(450 credits $4.50): the credit note subtracts it from the invoice."
        },
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("lines" in attrs) == ("amount_minor" in attrs):
            raise serializers.ValidationError("Credit either `lines` or an `amount_minor`.")
        return attrs


class InvoiceViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Invoice]
):
    """Invoices and credit notes of every account; the detail carries the lines."""

    queryset = Invoice.objects.order_by("-period_start", "-pk")
    serializer_class = InvoiceSerializer
    filterset_class = InvoiceFilter
    token_scope = Scope.BILLING
    # As in the console: finalising and correcting invoices is changing them.
    action_permissions = {
        "close": ("billing.change_invoice",),
        "credit_note": ("billing.change_invoice",),
    }

    def get_serializer_class(self) -> type[InvoiceSerializer]:
        return InvoiceDetailSerializer if self.action != "list" else InvoiceSerializer

    @extend_schema(request=MonthCloseSerializer, responses=MonthClosedSerializer)
    @action(detail=False, methods=["post"])
    def close(self, request: Request) -> Response:
        """Finalise a month: every account's invoice, numbered, once its grace window is over."""
        query = MonthCloseSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        try:
            result = invoices.invoices_month_close(
                actor=actor(request),
                period_start=query.validated_data["period_start"],
                request=request,
            )
        except InvoiceError as exc:
            raise serializers.ValidationError(str(exc), code="invoice_refused") from exc
        unpriced = [
            {"account": account, "tier": tier, "model": model, "tokens": tokens}
            for account, tier, model, tokens in result.unpriced
        ]
        return Response(
            {
                "period_start": result.period.start,
                "period_end": result.period.end,
                "finalised": result.finalised,
                "unpriced": unpriced,
                "late": [_late(usage) for usage in result.late],
                "late_pending": [_late(usage) for usage in result.late_pending],
            }
        )

    @extend_schema(request=CreditNoteSerializer, responses={201: InvoiceDetailSerializer})
    @action(detail=True, methods=["post"], url_path="credit-note")
    def credit_note(self, request: Request, pk: str) -> Response:
        """Correct a finalised invoice with a credit note (finalised and numbered at once)."""
        invoice = self.get_object()
        body = CreditNoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        lines = None
        if "lines" in data:
            lines = list(invoice.lines.filter(pk__in=data["lines"]))
            if len(lines) != len(set(data["lines"])):
                raise serializers.ValidationError({"lines": "Not all are lines of this invoice."})
        try:
            note = invoices.credit_note_issue(
                actor=actor(request),
                invoice=invoice,
                memo=data["memo"],
                lines=lines,
                amount_minor=data.get("amount_minor"),
                request=request,
            )
        except CreditTooLarge as exc:
            message = str(exc)
            if "amount_minor" in data:
                message += f" In minor units: `amount_minor` at most {exc.left_minor}."
            raise serializers.ValidationError(message, code="invoice_refused") from exc
        except InvoiceError as exc:
            raise serializers.ValidationError(str(exc), code="invoice_refused") from exc
        return Response(InvoiceDetailSerializer(note).data, status=status.HTTP_201_CREATED)


def _late(usage: LateUsage) -> dict[str, Any]:
    return {
        "account": usage.account_id,
        "month": f"{usage.month:%Y-%m}",
        "tier": usage.tier,
        "model": usage.model,
        "tokens": usage.tokens,
    }
