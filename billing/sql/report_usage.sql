-- The finance report's reconciliation (billing/reports.py): the month's usage in the ledger,
-- rated at list prices as the invoices rate it (billing/sql/invoice_usage.sql: the book of
-- `currency` in force when each request started, its (tier, model) row else (tier, '*');
-- catalogue/migrations/0002), summed per account and by what became of it:
--   unknown       the account id is not in customers_account: never invoiced
--   unpriced      no price in the book in force: worth nothing until one exists
--   open          the month is not closed (cutoff null): billed when it closes
--   invoiced      reached the ledger by the month's close (cutoff): on the month's invoices
--   billed_later  arrived after the close, by the last close's cutoff: billed on a later
--                 month's invoice as prior-period lines
--   waiting       arrived after the last close: the next close bills it
-- Token classes are summed before they are priced (rating is linear: exact).
-- Parameters: since, until, currency, cutoff, last_cutoff, fee_exempt.
-- Returns per (class, account_id): requests, tokens (prompt + completion), amount.
WITH sums AS (
    SELECT u.account_id, a.id IS NULL AS unknown,
           CASE WHEN %(cutoff)s::timestamptz IS NULL THEN 'open'
                WHEN u.stored_at IS NULL OR u.stored_at <= %(cutoff)s::timestamptz
                    THEN 'invoiced'
                WHEN u.stored_at <= %(last_cutoff)s::timestamptz THEN 'billed_later'
                ELSE 'waiting' END AS arrival,
           u.tier, u.model, b.id AS book_id,
           count(*) AS requests,
           sum(u.prompt_tokens::bigint + u.completion_tokens) AS tokens,
           sum(u.prompt_tokens::bigint - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens::bigint) AS cached_input,
           sum(u.completion_tokens::bigint - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens::bigint) AS reasoning,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS fee_requests
    FROM metering_usagerecord u
    LEFT JOIN customers_account a ON a.id = u.account_id
    LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
        AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
    WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
    GROUP BY 1, 2, 3, 4, 5, 6
)
SELECT CASE WHEN s.unknown THEN 'unknown' WHEN p.tier IS NULL THEN 'unpriced'
            ELSE s.arrival END AS class,
       s.account_id, sum(s.requests) AS requests, sum(s.tokens) AS tokens,
       coalesce(sum(s.input * p.input_per_million * 0.000001
                    + s.cached_input * p.cached_input_per_million * 0.000001
                    + s.output * p.output_per_million * 0.000001
                    + s.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)
                      * 0.000001
                    + s.fee_requests * p.request_fee), 0) AS amount
FROM sums s
LEFT JOIN LATERAL catalogue_price_in_force(s.book_id, s.tier, s.model) p ON true
GROUP BY 1, 2
ORDER BY 1, 2
