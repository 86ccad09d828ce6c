-- Where each plan's included tokens run out in a month (docs/billing.md, "Included tokens"),
-- read from the rollups of the close (billing/rollups.py): the tokens (prompt + completion) of
-- the account's records of its plan's tier, day by day until the first day they pass the
-- allowance, then hour by hour in that day until the first hour they do. Returns per account: `whole_until`, the end of the hours the allowance
-- covers whole (`until` when it never runs out); `left_over`, what is left of it for the records
-- of the hour from there (null when it never runs out), which invoice_included.sql applies record
-- by record in their order. Parameters: since, until, and three arrays of the same length:
-- accounts, tiers, allowances (as in invoice_included.sql).
WITH plans AS (
    SELECT *
    FROM unnest(%(accounts)s::bigint[], %(tiers)s::text[], %(allowances)s::bigint[])
        AS p(account_id, tier, allowance)
),
days AS (
    SELECT r.account_id, r.bucket, sum(r.prompt_tokens + r.completion_tokens) AS tokens
    FROM plans p
    JOIN billing_usagerollup r ON r.account_id = p.account_id AND r.tier = p.tier
    WHERE r.grain = 'day' AND r.bucket >= %(since)s AND r.bucket < %(until)s
    GROUP BY 1, 2
),
last_day AS (
    SELECT DISTINCT ON (d.account_id) d.account_id, d.bucket, d.used_before
    FROM (SELECT account_id, bucket, tokens,
                 coalesce(sum(tokens) OVER (PARTITION BY account_id ORDER BY bucket
                                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                          0) AS used_before
          FROM days) d
    JOIN plans p ON p.account_id = d.account_id
    WHERE d.used_before + d.tokens > p.allowance
    ORDER BY d.account_id, d.bucket
),
hours AS (
    SELECT r.account_id, r.bucket, l.used_before AS day_before,
           sum(r.prompt_tokens + r.completion_tokens) AS tokens
    FROM last_day l
    JOIN plans p ON p.account_id = l.account_id
    -- The day's hours through the (account_id, grain, bucket) index (OFFSET 0: a loop).
    CROSS JOIN LATERAL (
        SELECT * FROM billing_usagerollup r
        WHERE r.account_id = l.account_id AND r.tier = p.tier AND r.grain = 'hour'
          AND r.bucket >= l.bucket AND r.bucket < l.bucket + interval '1 day'
          AND r.bucket < %(until)s
        OFFSET 0
    ) r
    GROUP BY 1, 2, 3
),
spent AS (
    SELECT account_id, bucket, tokens,
           day_before
           + coalesce(sum(tokens) OVER (PARTITION BY account_id ORDER BY bucket
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                      0) AS used_before
    FROM hours
)
SELECT DISTINCT ON (p.account_id) p.account_id,
       coalesce(s.bucket, %(until)s::timestamptz) AS whole_until,
       p.allowance - s.used_before AS left_over
FROM plans p
LEFT JOIN spent s ON s.account_id = p.account_id AND s.used_before + s.tokens > p.allowance
ORDER BY p.account_id, s.bucket
