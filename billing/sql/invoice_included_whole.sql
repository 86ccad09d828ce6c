-- The usage the included tokens cover whole (docs/billing.md, "Included tokens"), from the
-- rollups: each account's rows of its plan's tier in [since, whole_until)
-- (invoice_included_hours.sql): the daily rows of the days before whole_until's, the hourly
-- ones of that day's hours before it; per account, tier, model, book and project, by class.
-- Parameters: since, month, and three arrays of the same length: accounts, tiers, and
-- whole_until.
WITH plans AS (
    SELECT *
    FROM unnest(%(accounts)s::bigint[], %(tiers)s::text[], %(whole_until)s::timestamptz[])
        AS p(account_id, tier, whole_until)
),
covered AS (
    SELECT r.*
    FROM plans p
    JOIN billing_usagerollup r ON r.account_id = p.account_id AND r.tier = p.tier
    WHERE r.grain = 'day' AND r.bucket >= %(since)s
      AND r.bucket < date_trunc('day', p.whole_until, 'UTC')
    UNION ALL
    -- The hours of one day per account, through the (account_id, grain, bucket) index: OFFSET
    -- 0 keeps it a loop per account (joined, every hour of the month is read, then filtered).
    SELECT r.*
    FROM plans p
    CROSS JOIN LATERAL (
        SELECT * FROM billing_usagerollup r
        WHERE r.account_id = p.account_id AND r.tier = p.tier AND r.grain = 'hour'
          AND r.bucket >= %(since)s
          AND r.bucket >= date_trunc('day', p.whole_until, 'UTC') AND r.bucket < p.whole_until
        OFFSET 0
    ) r
)
SELECT r.account_id, %(month)s::timestamptz AS month, r.tier, r.model,
       r.price_book_id AS book_id, coalesce(r.project_id, d.id) AS project_id,
       sum(r.prompt_tokens - r.cached_prompt_tokens) AS input,
       sum(r.cached_prompt_tokens) AS cached_input,
       sum(r.completion_tokens - r.reasoning_tokens) AS output,
       sum(r.reasoning_tokens) AS reasoning
FROM covered r
LEFT JOIN customers_project d ON d.account_id = r.account_id AND d.is_default
WHERE r.requests > 0
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
