-- One account's usage in [since, until) per project and model, rated at list prices in
-- `currency` by the rule of docs/billing.md ("Rating"), as billing/sql/usage_rated.sql rates
-- each record (the book in force at its started_at, its (tier, model) row, else (tier, '*');
-- unpriced usage is worth 0; a request that failed on every backend pays no request fee).
-- This is the spend budgets count: before included tokens and plan fees.
-- Parameters: account_id, since, until, currency, fee_exempt, project_ids (null: all).
-- Returns per (project_id, model): requests, errors, tokens (prompt + completion), amount.
SELECT u.project_id, u.model,
       count(*) AS requests,
       count(*) FILTER (WHERE u.status_code >= 400) AS errors,
       coalesce(sum(u.prompt_tokens + u.completion_tokens), 0) AS tokens,
       coalesce(sum(
           coalesce((u.prompt_tokens - u.cached_prompt_tokens) * p.input_per_million
                    * 0.000001, 0)
         + coalesce(u.cached_prompt_tokens * p.cached_input_per_million * 0.000001, 0)
         + coalesce((u.completion_tokens - u.reasoning_tokens) * p.output_per_million
                    * 0.000001, 0)
         + coalesce(u.reasoning_tokens * coalesce(p.reasoning_per_million, p.output_per_million)
                    * 0.000001, 0)
         + CASE WHEN u.outcome = ANY (%(fee_exempt)s::text[]) THEN 0
                ELSE coalesce(p.request_fee, 0) END
       ), 0) AS amount
FROM metering_usagerecord u
LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
    AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
LEFT JOIN LATERAL catalogue_price_in_force(b.id, u.tier, u.model) p ON true
WHERE u.account_id = %(account_id)s
  AND u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(project_ids)s::bigint[] IS NULL OR u.project_id = ANY (%(project_ids)s::bigint[]))
GROUP BY u.project_id, u.model
