-- The usage a plan's included tokens cover (docs/billing.md, "Included tokens", "Late usage"), in
-- one month (`month`): its records that started in [since, until) and reached the ledger in
-- (stored_after, arrived_by] (as in invoice_usage.sql), per account, tier, model, book in force and
-- project (as in invoice_usage.sql), by token class. The allowance is the account's, used across
-- its projects in the order of the records. Each account's records of its plan's tier use its
-- allowance (the month's whole allowance for the period's own usage, what the month left for its
-- late usage) in the order they were made (started_at, then request_id), and within a record its
-- classes in the order input, cached input, output, reasoning, until it runs out
-- (billing/rating.py: cover_included). Records of other tiers use none. Token sums are 64-bit.
-- Parameters: since, until, month, stored_after, arrived_by, currency, and five arrays of the same
-- length: accounts (ids), tiers (the plan's tier), allowances (included tokens left), and the
-- range of each account's records [starts, ends) within [since, until) that use them: the whole
-- month, or the hour its rollups show the allowance running out in (the close: the hours before
-- it are covered whole, invoice_included_whole.sql). The book in force: catalogue_book_span
-- (catalogue/migrations/0002).
WITH plans AS (
    SELECT *
    FROM unnest(%(accounts)s::bigint[], %(tiers)s::text[], %(allowances)s::bigint[],
                %(starts)s::timestamptz[], %(ends)s::timestamptz[])
        AS p(account_id, tier, allowance, starts, ends)
),
records AS (
    SELECT u.account_id, u.tier, u.model, b.id AS book_id,
           coalesce(u.project_id, d.id) AS project_id, p.allowance,
           u.prompt_tokens - u.cached_prompt_tokens AS input,
           u.cached_prompt_tokens AS cached_input,
           u.completion_tokens - u.reasoning_tokens AS output,
           u.reasoning_tokens AS reasoning,
           -- Two sums of integer columns: each is bigint, so is their sum (a sum of their
           -- per-row total would overflow 32 bits, and one of bigints is a slower numeric).
           coalesce(sum(u.prompt_tokens) OVER before + sum(u.completion_tokens) OVER before, 0)
               AS used_before
    FROM plans p
    -- Each account's records through the ledger's (account_id, started_at) index, its range
    -- the index scan's bounds: an hour of them when the close reads the rest from rollups.
    -- OFFSET 0 keeps the subquery a loop per account; flattened into a join, the planner
    -- reads every record of the month and applies the ranges after.
    CROSS JOIN LATERAL (
        SELECT * FROM metering_usagerecord u
        WHERE u.account_id = p.account_id AND u.tier = p.tier
          AND u.started_at >= %(since)s AND u.started_at < %(until)s
          AND u.started_at >= p.starts AND u.started_at < p.ends
          AND (%(stored_after)s::timestamptz IS NULL
               OR u.stored_at > %(stored_after)s::timestamptz)
          AND (%(arrived_by)s::timestamptz IS NULL OR u.stored_at IS NULL
               OR u.stored_at <= %(arrived_by)s::timestamptz)
        OFFSET 0
    ) u
    LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
        AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
    LEFT JOIN customers_project d ON d.account_id = u.account_id AND d.is_default
    WINDOW before AS (PARTITION BY u.account_id ORDER BY u.started_at, u.request_id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
covered AS (
    SELECT r.account_id, r.tier, r.model, r.book_id, r.project_id, ci.input, cc.cached_input,
           co.output,
           least(r.reasoning, l.left_over - ci.input - cc.cached_input - co.output) AS reasoning
    FROM records r
    CROSS JOIN LATERAL (SELECT r.allowance - r.used_before AS left_over) l
    CROSS JOIN LATERAL (SELECT least(r.input, l.left_over) AS input) ci
    CROSS JOIN LATERAL (SELECT least(r.cached_input, l.left_over - ci.input) AS cached_input) cc
    CROSS JOIN LATERAL (
        SELECT least(r.output, l.left_over - ci.input - cc.cached_input) AS output) co
    WHERE r.used_before < r.allowance
)
SELECT account_id, %(month)s::timestamptz AS month, tier, model, book_id, project_id,
       sum(input) AS input, sum(cached_input) AS cached_input, sum(output) AS output,
       sum(reasoning) AS reasoning
FROM covered
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
