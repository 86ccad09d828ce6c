-- What an invoice bills (docs/billing.md, "Rating", "Late usage"), of one account or all
-- (account_id null), summed per account, usage month, tier, model and the book of `currency`
-- in force when each request started (null before the first book), by token class:
--   * the period's usage: records that started in [since, until) and reached the ledger by
--     the close's cutoff (`arrived_by`; null: all, for a preview);
--   * late usage (when `late_since` is not null): records that started before `since` and
--     reached the ledger in (late_since, arrived_by], i.e. after their month was closed.
-- A request that failed on every backend pays no request fee (metering.events
-- FEE_EXEMPT_OUTCOMES). Rating is linear, so billing/invoicing.py rates these sums exactly as
-- it would rate each record. Token sums are 64-bit (bigint), whatever a record holds. The
-- book in force: catalogue_book_span (catalogue/migrations/0002).
-- Parameters: since, until, arrived_by, late_since, currency, account_id, fee_exempt.
WITH billed AS (
    SELECT * FROM metering_usagerecord u
    WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
      AND (%(arrived_by)s::timestamptz IS NULL OR u.stored_at IS NULL
           OR u.stored_at <= %(arrived_by)s::timestamptz)
      AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
    UNION ALL
    SELECT * FROM metering_usagerecord u
    WHERE %(late_since)s::timestamptz IS NOT NULL
      AND u.started_at < %(since)s
      AND u.stored_at > %(late_since)s::timestamptz
      AND (%(arrived_by)s::timestamptz IS NULL OR u.stored_at <= %(arrived_by)s::timestamptz)
      AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
)
SELECT u.account_id, date_trunc('month', u.started_at, 'UTC') AS month, u.tier, u.model, b.id AS book_id,
       sum(u.prompt_tokens::bigint - u.cached_prompt_tokens) AS input,
       sum(u.cached_prompt_tokens::bigint) AS cached_input,
       sum(u.completion_tokens::bigint - u.reasoning_tokens) AS output,
       sum(u.reasoning_tokens::bigint) AS reasoning,
       count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS requests
FROM billed u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
