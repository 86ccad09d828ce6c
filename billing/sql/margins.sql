-- The margins of [since, until) (whole UTC months), per day and per month, along each
-- dimension (tier, model, backend, account), rebuilt from the daily rollups; the caller deletes
-- the same buckets first, in the same transaction. docs/billing.md ("Margins"):
--   tokens = prompt + completion tokens; revenue = rated at list prices (before included
--   tokens and plan fees); margin = revenue - energy cost - GPU cost; margin_pct = margin /
--   revenue x 100 (null without revenue, or beyond +-99,999,999 per cent); cost per 1M tokens =
--   (energy + GPU cost) x 1e6 / tokens; tokens per kWh = tokens / kWh (null without either,
--   or beyond 1e15).
-- A backend's unallocated cost (rollup rows of account 0) counts in its backend row and, under
-- the key '(unallocated)', in the other dimensions, so every dimension adds up to the same
-- totals. Months are the sums of their days.
-- Parameters: since, until, currency.
WITH base AS (
    SELECT bucket AS day, account_id, tier, model, backend,
           sum(prompt_tokens + completion_tokens) AS tokens,
           sum(energy_joules::numeric) AS energy_j,
           sum(revenue) AS revenue, sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost
    FROM billing_usagerollup
    WHERE grain = 'day' AND bucket >= %(since)s AND bucket < %(until)s
    GROUP BY 1, 2, 3, 4, 5
),
days AS (
    SELECT b.day AS bucket, d.dimension, d.key,
           sum(b.tokens) AS tokens, sum(b.energy_j) AS energy_j, sum(b.revenue) AS revenue,
           sum(b.energy_cost) AS energy_cost, sum(b.gpu_cost) AS gpu_cost
    FROM base b
    CROSS JOIN LATERAL (
        VALUES ('tier', CASE WHEN b.account_id = 0 THEN '(unallocated)' ELSE b.tier END),
               ('model', CASE WHEN b.account_id = 0 THEN '(unallocated)' ELSE b.model END),
               ('backend', b.backend),
               ('account', CASE WHEN b.account_id = 0 THEN '(unallocated)'
                                ELSE b.account_id::text END)
    ) AS d(dimension, key)
    GROUP BY 1, 2, 3
),
sums AS (
    SELECT 'day' AS grain, * FROM days
    UNION ALL
    SELECT 'month', date_trunc('month', bucket, 'UTC'), dimension, key, sum(tokens),
           sum(energy_j), sum(revenue), sum(energy_cost), sum(gpu_cost)
    FROM days
    GROUP BY 2, 3, 4
),
ratios AS (
    SELECT *, revenue - energy_cost - gpu_cost AS margin,
           CASE WHEN revenue <> 0 THEN (revenue - energy_cost - gpu_cost) * 100 / revenue END
               AS pct
    FROM sums
)
INSERT INTO billing_margin
    (grain, bucket, dimension, key, currency, tokens, energy_kwh, revenue, energy_cost, gpu_cost,
     margin, margin_pct, cost_per_million_tokens, tokens_per_kwh)
SELECT grain, bucket, dimension, key, %(currency)s, tokens, energy_j / 3600000, revenue,
       energy_cost, gpu_cost, margin,
       CASE WHEN abs(pct) < 99999999 THEN pct END,
       CASE WHEN tokens > 0 THEN (energy_cost + gpu_cost) * 1000000 / tokens END,
       CASE WHEN energy_j > 0 AND tokens * 3600000 < energy_j * 1e15
            THEN tokens * 3600000 / energy_j END
FROM ratios
