-- The margins of [since, until) (whole UTC months), per day and per month, along each dimension
-- (tier, model, backend, account, project), rebuilt from the daily rollups; the caller deletes the
-- same buckets first, in the same transaction. docs/billing.md ("Margins", "Coverage"):
--   tokens = prompt + completion tokens; revenue = rated at list prices (before included
--   tokens and plan fees); margin = revenue - energy cost - GPU cost;
--   margin_pct = (revenue - the cost of all but the unpriced usage) / revenue x 100: the
--   margin of the priced usage (null without revenue, or beyond +-99,999,999 per cent);
--   cost per 1M tokens = energy cost x 1e6 / measured costed tokens + GPU cost x 1e6 / costed
--   tokens (null without either); tokens per kWh = measured tokens / kWh (null without
--   either, or beyond 1e15). Ratios never divide by tokens whose energy or cost is unknown.
-- Unpriced usage: the rollup rows of a request-carrying account without a price book. A backend's
-- unallocated cost (rollup rows of account 0) counts in its backend row and, under the key
-- '(unallocated)', in the other dimensions, so every dimension adds up to the same totals. A
-- project's key is its id; usage without a project (records of keys deleted before projects
-- existed) is under '(none)'. Months are the sums of their days. Parameters: since, until,
-- currency.
WITH base AS (
    SELECT bucket AS day, account_id, project_id, tier, model, backend,
           sum(prompt_tokens + completion_tokens) AS tokens,
           sum(energy_joules::numeric) AS energy_j,
           sum(revenue) AS revenue, sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost,
           sum(requests) AS requests, sum(measured_requests) AS measured_requests,
           sum(measured_tokens) AS measured_tokens, sum(costed_tokens) AS costed_tokens,
           sum(costed_measured_tokens) AS costed_measured_tokens,
           coalesce(sum(requests) FILTER (WHERE unpriced), 0) AS unpriced_requests,
           coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE unpriced), 0)
               AS unpriced_tokens,
           coalesce(sum(energy_cost + gpu_cost) FILTER (WHERE unpriced), 0) AS unpriced_cost
    FROM billing_usagerollup,
         LATERAL (SELECT price_book_id IS NULL AND account_id <> 0 AS unpriced) AS u
    WHERE grain = 'day' AND bucket >= %(since)s AND bucket < %(until)s
    GROUP BY 1, 2, 3, 4, 5, 6
),
days AS (
    SELECT b.day AS bucket, d.dimension, d.key,
           sum(b.tokens) AS tokens, sum(b.energy_j) AS energy_j, sum(b.revenue) AS revenue,
           sum(b.energy_cost) AS energy_cost, sum(b.gpu_cost) AS gpu_cost,
           sum(b.requests) AS requests, sum(b.measured_requests) AS measured_requests,
           sum(b.measured_tokens) AS measured_tokens, sum(b.costed_tokens) AS costed_tokens,
           sum(b.costed_measured_tokens) AS costed_measured_tokens,
           sum(b.unpriced_requests) AS unpriced_requests,
           sum(b.unpriced_tokens) AS unpriced_tokens, sum(b.unpriced_cost) AS unpriced_cost
    FROM base b
    CROSS JOIN LATERAL (
        VALUES ('tier', CASE WHEN b.account_id = 0 THEN '(unallocated)' ELSE b.tier END),
               ('model', CASE WHEN b.account_id = 0 THEN '(unallocated)' ELSE b.model END),
               ('backend', b.backend),
               ('account', CASE WHEN b.account_id = 0 THEN '(unallocated)'
                                ELSE b.account_id::text END),
               ('project', CASE WHEN b.account_id = 0 THEN '(unallocated)'
                                ELSE coalesce(b.project_id::text, '(none)') END)
    ) AS d(dimension, key)
    GROUP BY 1, 2, 3
),
sums AS (
    SELECT 'day' AS grain, * FROM days
    UNION ALL
    SELECT 'month', date_trunc('month', bucket, 'UTC'), dimension, key, sum(tokens),
           sum(energy_j), sum(revenue), sum(energy_cost), sum(gpu_cost), sum(requests),
           sum(measured_requests), sum(measured_tokens), sum(costed_tokens),
           sum(costed_measured_tokens), sum(unpriced_requests), sum(unpriced_tokens),
           sum(unpriced_cost)
    FROM days
    GROUP BY 2, 3, 4
),
ratios AS (
    SELECT *, revenue - energy_cost - gpu_cost AS margin,
           CASE WHEN revenue <> 0
                THEN (revenue - (energy_cost + gpu_cost - unpriced_cost)) * 100 / revenue
           END AS pct
    FROM sums
)
INSERT INTO billing_margin
    (grain, bucket, dimension, key, currency, tokens, energy_kwh, revenue, energy_cost, gpu_cost,
     margin, requests, measured_requests, measured_tokens, costed_tokens,
     costed_measured_tokens, unpriced_requests, unpriced_tokens, unpriced_cost, margin_pct,
     cost_per_million_tokens, tokens_per_kwh)
SELECT grain, bucket, dimension, key, %(currency)s, tokens, energy_j / 3600000, revenue,
       energy_cost, gpu_cost, margin, requests, measured_requests, measured_tokens,
       costed_tokens, costed_measured_tokens, unpriced_requests, unpriced_tokens,
       unpriced_cost,
       CASE WHEN abs(pct) < 99999999 THEN pct END,
       CASE WHEN costed_measured_tokens > 0 AND costed_tokens > 0
            THEN energy_cost * 1000000 / costed_measured_tokens
                 + gpu_cost * 1000000 / costed_tokens END,
       CASE WHEN energy_j > 0 AND measured_tokens > 0
                 AND measured_tokens * 3600000 < energy_j * 1e15
            THEN measured_tokens * 3600000 / energy_j END
FROM ratios
