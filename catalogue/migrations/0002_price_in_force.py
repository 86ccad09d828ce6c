"""Which price book is in force, and which of its price rows applies: one definition in SQL.

`catalogue_book_span`: every price book with the span it is in force, [effective_from,
effective_to), where effective_to is the next book's start in the same currency, else
'infinity'. A query joins it on `currency = ... AND at >= effective_from AND at <
effective_to` (the currency is the window's partition, so the planner pushes it into the
view).

`catalogue_price_in_force(book_id, tier, model)`: the book's (tier, model) price row, else its
(tier, '*') row, else none; one probe of the (price_book_id, tier, model) unique index. A SQL
function that PostgreSQL inlines into the query (STABLE, not STRICT, one SELECT): joined
`LATERAL` it plans as the subquery it holds.

billing/rating.py is the reference in Python (tests/billing/test_price_in_force.py).
"""

from django.db import migrations

BOOK_SPAN = """
CREATE VIEW catalogue_book_span AS
SELECT id, currency, effective_from,
       lead(effective_from, 1, 'infinity')
           OVER (PARTITION BY currency ORDER BY effective_from) AS effective_to
FROM catalogue_pricebook
"""

PRICE_IN_FORCE = """
CREATE FUNCTION catalogue_price_in_force(book_id bigint, tier text, model text)
RETURNS SETOF catalogue_price
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM catalogue_price p
    WHERE p.price_book_id = $1 AND p.tier = $2 AND p.model IN ($3, '*')
    ORDER BY p.model = '*'
    LIMIT 1
$$
"""


class Migration(migrations.Migration):
    dependencies = [("catalogue", "0001_initial")]

    operations = [
        migrations.RunSQL(BOOK_SPAN, "DROP VIEW catalogue_book_span"),
        migrations.RunSQL(
            PRICE_IN_FORCE, "DROP FUNCTION catalogue_price_in_force(bigint, text, text)"
        ),
    ]
