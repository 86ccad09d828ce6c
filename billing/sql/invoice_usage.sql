-- What an invoice bills: the usage that started in [since, until), of one account or all
-- (account_id null), summed per account, tier, model and the book of `currency` in force when
-- each request started (null before the first book), by token class (docs/billing.md,
-- "Rating"). Rating is linear, so billing/invoicing.py rates these sums exactly as it would
-- rate each record. The book in force: catalogue_book_span (catalogue/migrations/0002).
-- Parameters: since, until, currency, account_id.
SELECT u.account_id, u.tier, u.model, b.id AS book_id,
       sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
       sum(u.cached_prompt_tokens) AS cached_input,
       sum(u.completion_tokens - u.reasoning_tokens) AS output,
       sum(u.reasoning_tokens) AS reasoning,
       count(*) AS requests
FROM metering_usagerecord u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
