-- The finance report (billing/reports.py): one period's margins as the margin job stored them
-- (billing/sql/margins.sql), per dimension (tier, model, backend, account): the `top` keys by
-- revenue each, the rest summed in one row (key null; top null: every key), and the key
-- '(unallocated)' (backend hours without requests, docs/billing.md) always on its own, last;
-- then the period's total (every dimension adds up to it; the backends' rows are summed).
-- Ratios as the margin job defines them, over the usage that has what they divide (measured
-- energy, a cost model: docs/billing.md, "Coverage"), left unrounded; null where they divide
-- by zero. Coverage shares: of tokens and requests, measured; of tokens, costed.
-- Parameters: grain, bucket, currency, top.
WITH margin AS (
    SELECT *,
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
           sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost,
           sum(requests) AS requests, sum(measured_requests) AS measured_requests,
           sum(measured_tokens) AS measured_tokens, sum(costed_tokens) AS costed_tokens,
           sum(costed_measured_tokens) AS costed_measured_tokens,
           sum(unpriced_requests) AS unpriced_requests, sum(unpriced_tokens) AS unpriced_tokens,
           sum(unpriced_cost) AS unpriced_cost
    FROM margin
    GROUP BY 1, 2
    UNION ALL
    SELECT 'total', NULL, 0, count(*), coalesce(sum(tokens), 0), coalesce(sum(energy_kwh), 0),
           coalesce(sum(revenue), 0), coalesce(sum(energy_cost), 0), coalesce(sum(gpu_cost), 0),
           coalesce(sum(requests), 0), coalesce(sum(measured_requests), 0),
           coalesce(sum(measured_tokens), 0), coalesce(sum(costed_tokens), 0),
           coalesce(sum(costed_measured_tokens), 0), coalesce(sum(unpriced_requests), 0),
           coalesce(sum(unpriced_tokens), 0), coalesce(sum(unpriced_cost), 0)
    FROM margin
    WHERE dimension = 'backend'
)
SELECT r.dimension, r.key, a.name AS account_name, r.keys, r.tokens, r.energy_kwh, r.revenue,
       r.energy_cost, r.gpu_cost, r.requests, r.measured_requests, r.measured_tokens,
       r.costed_tokens, r.costed_measured_tokens, r.unpriced_requests, r.unpriced_tokens,
       (r.revenue - (r.energy_cost + r.gpu_cost - r.unpriced_cost)) * 100
           / nullif(r.revenue, 0) AS margin_pct,
       r.energy_cost * 1000000 / nullif(r.costed_measured_tokens, 0)
           AS energy_cost_per_million_tokens,
       r.gpu_cost * 1000000 / nullif(r.costed_tokens, 0) AS gpu_cost_per_million_tokens,
       CASE WHEN r.measured_tokens > 0 THEN r.measured_tokens / nullif(r.energy_kwh, 0) END
           AS tokens_per_kwh,
       r.energy_kwh * 3600000 / nullif(r.measured_tokens, 0) AS joules_per_token,
       r.measured_tokens::numeric / nullif(r.tokens, 0) AS measured_token_share,
       r.measured_requests::numeric / nullif(r.requests, 0) AS measured_request_share,
       r.costed_tokens::numeric / nullif(r.tokens, 0) AS costed_token_share
FROM rows r
LEFT JOIN customers_account a ON r.dimension = 'account' AND a.id::text = r.key
ORDER BY array_position(ARRAY['total', 'tier', 'model', 'backend', 'account'], r.dimension),
         r.rank, r.key
