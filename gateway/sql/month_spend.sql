-- What each project of each account has spent this month, to rebuild the gateway's spend
-- counters after Redis lost them (gateway/limits.py, which adds an account's projects up).
-- project_id is null for usage whose key was deleted before projects existed. Every request is rated by the rule of docs/billing.md
-- ("Rating") with the price book in force when it started, in billing's currency; a request
-- that failed on every backend (an outcome in fee_exempt) pays no request fee; usage without a
-- price counts nothing.
-- The book in force and its price row: catalogue_book_span and catalogue_price_in_force
-- (catalogue/migrations/0002).
-- Parameters: month (start of the UTC month), currency, fee_exempt (outcomes, text[]).
-- Returns account_id, project_id, spend in pico-units (10^-12 of the currency; exact, 6 zero decimals).
-- Summed before pricing: one row per project, book, tier and model.
WITH usage AS (
    SELECT u.account_id, u.project_id, bk.id AS book_id, u.tier, u.model,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS requests,
           sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens) AS cached,
           sum(u.completion_tokens - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens) AS reasoning
    FROM metering_usagerecord u
    JOIN catalogue_book_span bk ON bk.currency = %(currency)s
        AND u.started_at >= bk.effective_from AND u.started_at < bk.effective_to
    WHERE u.started_at >= %(month)s
    GROUP BY 1, 2, 3, 4, 5
)
-- A price per million tokens is 10^6 pico-units per token, a fee 10^12 pico-units per unit.
SELECT us.account_id, us.project_id,
       sum((us.input * p.input_per_million
            + us.cached * p.cached_input_per_million
            + us.output * p.output_per_million
            + us.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)) * 1000000
           + us.requests * p.request_fee * 1000000000000) AS pico
FROM usage us
CROSS JOIN LATERAL catalogue_price_in_force(us.book_id, us.tier, us.model) p
GROUP BY us.account_id, us.project_id
