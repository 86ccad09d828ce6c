-- The finance report (billing/reports.py): one period's margins as the margin job stored them
-- (billing/sql/margins.sql), per dimension (tier, model, backend, account): the `top` keys by
-- revenue each, the rest summed in one row (key null; top null: every key), and the key
-- '(unallocated)' (backend hours without requests, docs/billing.md) always on its own, last;
-- then the period's total (every dimension adds up to it; the backends' rows are summed).
-- Ratios as the margin job defines them, left unrounded; null where they divide by zero.
-- Parameters: grain, bucket, currency, top.
WITH margin AS (
    SELECT dimension, key, tokens, energy_kwh, revenue, energy_cost, gpu_cost,
           CASE WHEN key = '(unallocated)' THEN 1e9
                ELSE row_number() OVER (PARTITION BY dimension, key = '(unallocated)'
                                        ORDER BY revenue DESC, key)
           END AS rank
    FROM billing_margin
    WHERE grain = %(grain)s AND bucket = %(bucket)s AND currency = %(currency)s
),
rows AS (
    SELECT dimension,
           CASE WHEN %(top)s::int IS NULL OR rank <= %(top)s::int OR key = '(unallocated)'
                THEN key END AS key,
           min(rank) AS rank, count(*) AS keys, sum(tokens) AS tokens,
           sum(energy_kwh) AS energy_kwh, sum(revenue) AS revenue,
           sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost
    FROM margin
    GROUP BY 1, 2
    UNION ALL
    SELECT 'total', NULL, 0, count(*), coalesce(sum(tokens), 0), coalesce(sum(energy_kwh), 0),
           coalesce(sum(revenue), 0), coalesce(sum(energy_cost), 0), coalesce(sum(gpu_cost), 0)
    FROM margin
    WHERE dimension = 'backend'
)
SELECT r.dimension, r.key, a.name AS account_name, r.keys, r.tokens, r.energy_kwh, r.revenue,
       r.energy_cost, r.gpu_cost,
       (r.revenue - r.energy_cost - r.gpu_cost) * 100 / nullif(r.revenue, 0) AS margin_pct,
       (r.energy_cost + r.gpu_cost) * 1000000 / nullif(r.tokens, 0) AS cost_per_million_tokens,
       r.tokens / nullif(r.energy_kwh, 0) AS tokens_per_kwh
FROM rows r
LEFT JOIN gateway_account a ON r.dimension = 'account' AND a.id::text = r.key
ORDER BY array_position(ARRAY['total', 'tier', 'model', 'backend', 'account'], r.dimension),
         r.rank, r.key
