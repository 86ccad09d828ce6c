-- What an invoice bills (docs/billing.md, "Rating", "Late usage"), of one account or all
-- (account_id null): the records that started in [since, until) and reached the ledger in the
-- window (stored_after, arrived_by] (either bound null: open; a record stored before arrivals were
-- recorded has a null stored_at and counts only when stored_after is null), summed per account,
-- usage month (`month`, or when null each record's own), tier, model, the book of `currency` in
-- force when each request started (null before the first book) and project, by token class. A
-- record without a project (of a key deleted before projects existed, when every key was in its
-- account's default project) counts in the default one, so an account with one project has one
-- project's lines, as before projects. A close reads the period's own usage (stored_after null,
-- arrived_by its cutoff), then the late usage of earlier months (started before the period, stored
-- after the previous close). A request that failed on every backend pays no request fee
-- (`fee_exempt`: metering.events.FEE_EXEMPT_OUTCOMES). Rating is linear, so billing/invoicing.py
-- rates these sums exactly as it would rate each record. Token sums are 64-bit (sum of integer is
-- bigint). The book in force: catalogue_book_span (catalogue/migrations/0002). Parameters: since,
-- until, month, stored_after, arrived_by, currency, account_id, fee_exempt.
SELECT u.account_id,
       coalesce(%(month)s::timestamptz, date_trunc('month', u.started_at, 'UTC')) AS month,
       u.tier, u.model, b.id AS book_id,
       coalesce(u.project_id, d.id) AS project_id,
       sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
       sum(u.cached_prompt_tokens) AS cached_input,
       sum(u.completion_tokens - u.reasoning_tokens) AS output,
       sum(u.reasoning_tokens) AS reasoning,
       count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS requests
FROM metering_usagerecord u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
LEFT JOIN customers_project d ON d.account_id = u.account_id AND d.is_default
WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(stored_after)s::timestamptz IS NULL OR u.stored_at > %(stored_after)s::timestamptz)
  AND (%(arrived_by)s::timestamptz IS NULL OR u.stored_at IS NULL
       OR u.stored_at <= %(arrived_by)s::timestamptz)
  AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
