-- The usage records that started in [since, until), of one account or all (account_id null),
-- each rated by the rule of docs/billing.md ("Rating"), as billing/rating.py rates it: the
-- book of `currency` in force at its started_at, that book's (tier, model) price row, else its
-- (tier, '*') row (catalogue_book_span and catalogue_price_in_force,
-- catalogue/migrations/0002). An unpriced record has a null book and zero amounts. Amounts
-- are exact: prices have 6 places and multiplying by 0.000001 adds 6 (no division, nothing
-- rounded). A request that failed on every backend pays no request fee (fee_exempt).
-- Parameters: since, until, currency, account_id, fee_exempt.
-- Returns per record: request_id, started_at, account_id, tier, model, price_book_id, and the
-- amounts input, cached_input, output, reasoning, request_fee.
SELECT u.request_id, u.started_at, u.account_id, u.tier, u.model,
       CASE WHEN p.id IS NOT NULL THEN b.id END AS price_book_id,
       coalesce((u.prompt_tokens - u.cached_prompt_tokens) * p.input_per_million * 0.000001, 0)
           AS input,
       coalesce(u.cached_prompt_tokens * p.cached_input_per_million * 0.000001, 0)
           AS cached_input,
       coalesce((u.completion_tokens - u.reasoning_tokens) * p.output_per_million * 0.000001, 0)
           AS output,
       coalesce(u.reasoning_tokens * coalesce(p.reasoning_per_million, p.output_per_million)
                * 0.000001, 0) AS reasoning,
       CASE WHEN u.outcome = ANY (%(fee_exempt)s::text[]) THEN 0
            ELSE coalesce(p.request_fee, 0) END AS request_fee
FROM metering_usagerecord u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
LEFT JOIN LATERAL catalogue_price_in_force(b.id, u.tier, u.model) p ON true
WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
ORDER BY u.started_at, u.request_id
