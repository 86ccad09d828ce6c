-- The rated cost of each prepaid account's usage that started in [since, until) (since null:
-- from the first record): what the gateway took off the credit counter at settle and the
-- draw-down has not recorded yet (billing/credits.py, credits_rebuild). Rated by the rule of
-- usage_rated.sql, exactly.
-- Parameters: accounts (bigint[]), since, until, currency, fee_exempt.
-- Returns per account with usage: account_id, total.
SELECT u.account_id,
       sum(coalesce((u.prompt_tokens - u.cached_prompt_tokens) * p.input_per_million * 0.000001, 0)
           + coalesce(u.cached_prompt_tokens * p.cached_input_per_million * 0.000001, 0)
           + coalesce((u.completion_tokens - u.reasoning_tokens) * p.output_per_million
                      * 0.000001, 0)
           + coalesce(u.reasoning_tokens * coalesce(p.reasoning_per_million, p.output_per_million)
                      * 0.000001, 0)
           + CASE WHEN u.outcome = ANY (%(fee_exempt)s::text[]) THEN 0
                  ELSE coalesce(p.request_fee, 0) END) AS total
FROM metering_usagerecord u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
LEFT JOIN LATERAL catalogue_price_in_force(b.id, u.tier, u.model) p ON true
WHERE u.account_id = ANY (%(accounts)s::bigint[])
  AND (%(since)s::timestamptz IS NULL OR u.started_at >= %(since)s::timestamptz)
  AND u.started_at < %(until)s
GROUP BY u.account_id
