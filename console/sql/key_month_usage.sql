-- Each API key's usage in [since, until) (the month so far, for the console's account and key
-- pages): requests, tokens (prompt + completion) and spend, i.e. the usage at list prices by
-- the rule of docs/billing.md ("Rating", "Spend caps"): the book of `currency` in force when
-- the request started, its (tier, model) row else its (tier, '*') row
-- (catalogue_book_span and catalogue_price_in_force, catalogue/migrations/0002); no request
-- fee for an outcome in fee_exempt; usage without a price is worth nothing. Exact: a price per
-- million has 6 places, times 0.000001 adds 6 (nothing divided, nothing rounded).
-- The records of the accounts in account_ids (the ledger's (account_id, started_at) index),
-- of the keys in key_ids where it is not null.
-- Parameters: since, until, currency, fee_exempt (text[]), account_ids (bigint[]), key_ids
-- (bigint[] or null).
-- Returns per key with usage: api_key_id, account_id, requests, tokens, spend.
-- Summed before pricing: one row per key, book, tier and model.
WITH usage AS (
    SELECT u.api_key_id, u.account_id, bk.id AS book_id, u.tier, u.model,
           count(*) AS requests,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS billable,
           sum(u.prompt_tokens::bigint + u.completion_tokens) AS tokens,
           sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens) AS cached,
           sum(u.completion_tokens - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens) AS reasoning
    FROM metering_usagerecord u
    LEFT JOIN catalogue_book_span bk ON bk.currency = %(currency)s
        AND u.started_at >= bk.effective_from AND u.started_at < bk.effective_to
    WHERE u.account_id = ANY (%(account_ids)s::bigint[])
      AND u.started_at >= %(since)s AND u.started_at < %(until)s
      AND (%(key_ids)s::bigint[] IS NULL OR u.api_key_id = ANY (%(key_ids)s::bigint[]))
    GROUP BY 1, 2, 3, 4, 5
)
SELECT us.api_key_id, us.account_id, sum(us.requests)::bigint AS requests,
       sum(us.tokens)::bigint AS tokens,
       coalesce(sum((us.input * p.input_per_million
                     + us.cached * p.cached_input_per_million
                     + us.output * p.output_per_million
                     + us.reasoning * coalesce(p.reasoning_per_million, p.output_per_million))
                    * 0.000001
                    + us.billable * p.request_fee), 0) AS spend
FROM usage us
LEFT JOIN LATERAL catalogue_price_in_force(us.book_id, us.tier, us.model) p ON true
GROUP BY us.api_key_id, us.account_id
