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
-- Read from the rollups (billing/rollups.py), which hold the records stored by their arrivals
-- watermark (rolled_by) in the hours before their watermark (rolled_until), and from the ledger
-- only the records that are not in them or arrived after the close's cutoff (`after`, the
-- earlier of the two): a late record counted in the rollups has its class there ('invoiced'
-- or 'open') taken off and its own added. Rollups rate as this does (rating is linear and
-- exact: the sum of their revenue is the rating of the sums); token classes are summed before
-- they are priced. Without rollups (both watermarks null: -infinity) the ledger is read whole.
-- Parameters: since, until, currency, cutoff, last_cutoff, fee_exempt, rolled_until, rolled_by,
-- after.
-- Returns per (class, account_id): requests, tokens (prompt + completion), amount.
WITH late AS (
    SELECT u.account_id, a.id IS NULL AS unknown,
           CASE WHEN %(cutoff)s::timestamptz IS NULL THEN 'open'
                WHEN u.stored_at IS NULL OR u.stored_at <= %(cutoff)s::timestamptz
                    THEN 'invoiced'
                WHEN u.stored_at <= %(last_cutoff)s::timestamptz THEN 'billed_later'
                ELSE 'waiting' END AS arrival,
           u.started_at < %(rolled_until)s
               AND (u.stored_at IS NULL OR u.stored_at <= %(rolled_by)s) AS rolled,
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
      AND (u.started_at >= %(rolled_until)s OR u.stored_at > %(after)s)
    GROUP BY 1, 2, 3, 4, 5, 6, 7
),
rated AS (
    SELECT CASE WHEN s.unknown THEN 'unknown' WHEN p.tier IS NULL THEN 'unpriced'
                ELSE s.arrival END AS class,
           CASE WHEN s.unknown THEN 'unknown' WHEN p.tier IS NULL THEN 'unpriced'
                WHEN %(cutoff)s::timestamptz IS NULL THEN 'open'
                ELSE 'invoiced' END AS rolled_class,
           s.rolled, s.account_id, s.requests, s.tokens,
           coalesce(s.input * p.input_per_million * 0.000001
                    + s.cached_input * p.cached_input_per_million * 0.000001
                    + s.output * p.output_per_million * 0.000001
                    + s.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)
                      * 0.000001
                    + s.fee_requests * p.request_fee, 0) AS amount
    FROM late s
    LEFT JOIN LATERAL catalogue_price_in_force(s.book_id, s.tier, s.model) p ON true
),
-- Whole days from the daily rollups, the day the watermark falls in from the hourly ones.
rolled AS (
    SELECT CASE WHEN a.id IS NULL THEN 'unknown' WHEN r.price_book_id IS NULL THEN 'unpriced'
                WHEN %(cutoff)s::timestamptz IS NULL THEN 'open'
                ELSE 'invoiced' END AS class,
           r.account_id, sum(r.requests) AS requests,
           sum(r.prompt_tokens + r.completion_tokens) AS tokens, sum(r.revenue) AS amount
    FROM billing_usagerollup r
    LEFT JOIN customers_account a ON a.id = r.account_id
    WHERE r.requests > 0 AND r.bucket >= %(since)s AND r.bucket < %(until)s
      AND ((r.grain = 'day'
            AND r.bucket < date_trunc('day', %(rolled_until)s::timestamptz, 'UTC'))
           OR (r.grain = 'hour'
               AND r.bucket >= date_trunc('day', %(rolled_until)s::timestamptz, 'UTC')
               AND r.bucket < %(rolled_until)s))
    GROUP BY 1, 2
)
SELECT class, account_id, sum(requests) AS requests, sum(tokens) AS tokens,
       sum(amount) AS amount
FROM (
    SELECT class, account_id, requests, tokens, amount FROM rolled
    UNION ALL
    SELECT class, account_id, requests, tokens, amount FROM rated
    UNION ALL
    SELECT rolled_class, account_id, -requests, -tokens, -amount FROM rated WHERE rolled
) AS parts
GROUP BY 1, 2
HAVING sum(requests) <> 0
ORDER BY 1, 2
