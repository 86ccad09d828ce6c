# mypy: allow-subclassing-any, allow-untyped-decorators, allow-untyped-calls
# (DRF and django-filter have no type information installed here.)
"""The one kind of body the API reads: JSON, no bigger than DATA_UPLOAD_MAX_MEMORY_SIZE (413,
checked by Django as the body is read) and nested at most MAX_DEPTH deep (400).

Python's decoder recurses once per level, so a body of a few thousand brackets would end in a
RecursionError (a 500); and a structure just under that limit, once stored, could not be
rendered back. No body of this API is deeper than a price book's prices (3).
"""

from typing import Any

from rest_framework import exceptions, parsers

from gateway.validation import nested_deeper_than

MAX_DEPTH = 32


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise _too_deep() from None
        if nested_deeper_than(data, MAX_DEPTH):
            raise _too_deep()
        return data


def _too_deep() -> exceptions.ParseError:
    return exceptions.ParseError(f"JSON nested more than {MAX_DEPTH} deep.", code="too_deep")
