-- Where each plan's included tokens run out in a month (docs/billing.md, "Included tokens"),
-- read from the hourly rollups of the close (billing/rollups.py): the tokens (prompt +
-- completion) of the account's records of its plan's tier, hour by hour, until the first hour
-- they pass the allowance. Returns per account: `whole_until`, the end of the hours the allowance
-- covers whole (`until` when it never runs out); `left_over`, what is left of it for the records
-- of the hour from there (null when it never runs out), which invoice_included.sql applies record
-- by record in their order. Parameters: since, until, and three arrays of the same length:
-- accounts, tiers, allowances (as in invoice_included.sql).
WITH plans AS (
    SELECT *
    FROM unnest(%(accounts)s::bigint[], %(tiers)s::text[], %(allowances)s::bigint[])
        AS p(account_id, tier, allowance)
),
hours AS (
    SELECT r.account_id, r.bucket, sum(r.prompt_tokens + r.completion_tokens) AS tokens
    FROM plans p
    JOIN billing_usagerollup r ON r.account_id = p.account_id AND r.tier = p.tier
    WHERE r.grain = 'hour' AND r.bucket >= %(since)s AND r.bucket < %(until)s
    GROUP BY 1, 2
),
spent AS (
    SELECT h.account_id, h.bucket, h.tokens,
           coalesce(sum(h.tokens) OVER (PARTITION BY h.account_id ORDER BY h.bucket
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                    0) AS used_before
    FROM hours h
)
SELECT DISTINCT ON (p.account_id) p.account_id,
       coalesce(s.bucket, %(until)s::timestamptz) AS whole_until,
       p.allowance - s.used_before AS left_over
FROM plans p
LEFT JOIN spent s ON s.account_id = p.account_id AND s.used_before + s.tokens > p.allowance
ORDER BY p.account_id, s.bucket
