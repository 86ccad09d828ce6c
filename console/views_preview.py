"""The preview of a price book: what it would have charged for last month's usage, per tier and
model, beside what that usage was rated (billing.book_preview). Linked from the book's page.

Staff only, as the console admits them (the admin site's own check, with its sign-in page),
and only for staff who may see price books.
"""

from decimal import Decimal

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone

from billing.book_preview import BookPreview, book_preview
from billing.money import money_text
from billing.views import staff_only
from catalogue.models import PriceBook


def _figures(preview: BookPreview) -> dict[str, object]:
    def money(amount: Decimal) -> str:
        return money_text(amount, preview.book.currency)

    return {
        "lines": [
            {
                "tier": line.tier,
                "model": line.model,
                "requests": f"{line.requests:,}",
                "tokens": f"{line.tokens:,}",
                "rated": money(line.rated),
                "book": money(line.book),
                "difference": money(line.difference),
                "rated_unpriced": line.rated_unpriced,
                "book_unpriced": line.book_unpriced,
            }
            for line in preview.lines
        ],
        "rated": money(preview.rated),
        "total": money(preview.total),
        "difference": money(preview.difference),
    }


@staff_only
def price_book_preview(request: HttpRequest, book_id: int) -> HttpResponse:
    """GET /admin/catalogue/pricebook/<id>/preview/"""
    if not request.user.has_perm("catalogue.view_pricebook"):
        raise PermissionDenied
    book = get_object_or_404(PriceBook, pk=book_id)
    preview = book_preview(book=book, now=timezone.now())
    context = {
        **admin.site.each_context(request),
        "title": f"What “{book.name}” would have charged in {preview.since:%B %Y}",
        "book": book,
        "preview": preview,
        **_figures(preview),
    }
    return TemplateResponse(request, "console/book_preview.html", context)
