-- The finance report (billing/reports.py): one month's margins as the margin job stored them
-- (billing/sql/margins.sql), per dimension (tier, model, backend, account, project): the `top`
-- keys by revenue each, the rest summed in one row (key null; top null: every key), and the key
-- '(unallocated)' (backend hours without requests, docs/billing.md) always on its own, last;
-- then one row per day (the backends' daily margins, every day, never cut to the top); then
-- the month's total (every dimension adds up to it; the backends' rows are summed).
--
-- Revenue is of known accounts: the list price of usage of account ids not in
-- customers_account (the close does not invoice it) is taken out of each key and day, from
-- the daily rollups, and kept apart as unknown_revenue. An account row carries what the
-- month's finalised invoices and credit notes in `currency` billed it (minor units), and an
-- account billed without usage (a plan fee alone) gets a row of its own, so the accounts add
-- up to what was invoiced.
--
-- Ratios as the margin job defines them, over the usage that has what they divide (measured
-- energy, a cost model: docs/billing.md, "Coverage"), left unrounded; null where they divide
-- by zero. Coverage shares: of tokens and requests, measured; of tokens, costed.
-- Parameters: since, until (the month), currency, top.
WITH billed AS (
    SELECT account_id::text AS key,
           coalesce(sum(total_minor) FILTER (WHERE kind = 'invoice'), 0) AS invoiced_minor,
           coalesce(sum(total_minor) FILTER (WHERE kind = 'credit_note'), 0) AS credited_minor
    FROM billing_invoice
    WHERE status = 'finalised' AND period_start = %(since)s AND currency = %(currency)s
    GROUP BY account_id
),
stored AS (
    SELECT CASE WHEN grain = 'day' THEN 'day' ELSE dimension END AS dimension,
           CASE WHEN grain = 'day' THEN to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                ELSE key END AS key,
           CASE WHEN grain = 'day' THEN key END AS backend,
           tokens, energy_kwh, revenue, energy_cost, gpu_cost, requests, measured_requests,
           measured_tokens, costed_tokens, costed_measured_tokens, unpriced_requests,
           unpriced_tokens, unpriced_cost
    FROM billing_margin
    WHERE currency = %(currency)s
      AND ((grain = 'month' AND bucket = %(since)s)
           OR (grain = 'day' AND dimension = 'backend'
               AND bucket >= %(since)s AND bucket < %(until)s))
),
unknown AS (
    SELECT d.dimension, d.key, sum(r.revenue) AS revenue
    FROM billing_usagerollup r
    CROSS JOIN LATERAL (VALUES ('tier', r.tier), ('model', r.model), ('backend', r.backend),
                               ('account', r.account_id::text),
                               ('project', coalesce(r.project_id::text, '(none)')),
                               ('day', to_char(r.bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                                       || ' ' || r.backend))
        AS d(dimension, key)
    WHERE r.grain = 'day' AND r.bucket >= %(since)s AND r.bucket < %(until)s
      AND r.account_id <> 0
      AND NOT EXISTS (SELECT 1 FROM customers_account a WHERE a.id = r.account_id)
    GROUP BY 1, 2
),
margin AS (
    SELECT s.dimension, s.key, s.tokens, s.energy_kwh,
           s.revenue - coalesce(u.revenue, 0) AS revenue, coalesce(u.revenue, 0) AS unknown_revenue,
           s.energy_cost, s.gpu_cost, s.requests, s.measured_requests, s.measured_tokens,
           s.costed_tokens, s.costed_measured_tokens, s.unpriced_requests, s.unpriced_tokens,
           s.unpriced_cost, b.invoiced_minor, b.credited_minor
    FROM stored s
    -- A day's rows are its backends': each loses its own backend's unknown usage.
    LEFT JOIN unknown u ON u.dimension = s.dimension
        AND u.key = s.key || coalesce(' ' || s.backend, '')
    LEFT JOIN billed b ON s.dimension = 'account' AND b.key = s.key
    UNION ALL
    SELECT 'account', b.key, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
           b.invoiced_minor, b.credited_minor
    FROM billed b
    WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.dimension = 'account' AND s.key = b.key)
),
ranked AS (
    SELECT *,
           CASE WHEN key = '(unallocated)' THEN 1e9
                ELSE row_number() OVER (PARTITION BY dimension, key = '(unallocated)'
                                        ORDER BY revenue DESC,
                                                 coalesce(invoiced_minor, 0) DESC, key)
           END AS rank
    FROM margin
),
rows AS (
    SELECT dimension,
           CASE WHEN %(top)s::int IS NULL OR rank <= %(top)s::int OR key = '(unallocated)'
                     OR dimension = 'day'
                THEN key END AS key,
           min(rank) AS rank, count(*) AS keys, sum(tokens) AS tokens,
           sum(energy_kwh) AS energy_kwh, sum(revenue) AS revenue,
           sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost,
           sum(requests) AS requests, sum(measured_requests) AS measured_requests,
           sum(measured_tokens) AS measured_tokens, sum(costed_tokens) AS costed_tokens,
           sum(costed_measured_tokens) AS costed_measured_tokens,
           sum(unpriced_requests) AS unpriced_requests, sum(unpriced_tokens) AS unpriced_tokens,
           sum(unpriced_cost) AS unpriced_cost, sum(unknown_revenue) AS unknown_revenue,
           sum(invoiced_minor) AS invoiced_minor, sum(credited_minor) AS credited_minor
    FROM ranked
    GROUP BY 1, 2
    UNION ALL
    SELECT 'total', NULL, 0, count(*), coalesce(sum(tokens), 0), coalesce(sum(energy_kwh), 0),
           coalesce(sum(revenue), 0), coalesce(sum(energy_cost), 0), coalesce(sum(gpu_cost), 0),
           coalesce(sum(requests), 0), coalesce(sum(measured_requests), 0),
           coalesce(sum(measured_tokens), 0), coalesce(sum(costed_tokens), 0),
           coalesce(sum(costed_measured_tokens), 0), coalesce(sum(unpriced_requests), 0),
           coalesce(sum(unpriced_tokens), 0), coalesce(sum(unpriced_cost), 0),
           coalesce(sum(unknown_revenue), 0),
           (SELECT coalesce(sum(invoiced_minor), 0) FROM billed),
           (SELECT coalesce(sum(credited_minor), 0) FROM billed)
    FROM margin
    WHERE dimension = 'backend'
)
-- account_name: an account's, or a project's account and name ("Acme / search").
SELECT r.dimension, r.key, coalesce(a.name, pa.name || ' / ' || p.name) AS account_name,
       r.keys, r.tokens, r.energy_kwh, r.revenue,
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
       r.costed_tokens::numeric / nullif(r.tokens, 0) AS costed_token_share,
       r.unpriced_cost, r.unknown_revenue, r.invoiced_minor, r.credited_minor,
       r.dimension = 'account' AND r.key IS NOT NULL AND r.key <> '(unallocated)'
           AND a.id IS NULL AS unknown_account
FROM rows r
LEFT JOIN customers_account a ON r.dimension = 'account' AND a.id::text = r.key
LEFT JOIN customers_project p ON r.dimension = 'project' AND p.id::text = r.key
LEFT JOIN customers_account pa ON pa.id = p.account_id
ORDER BY array_position(ARRAY['total', 'tier', 'model', 'backend', 'account', 'project', 'day'],
                        r.dimension),
         CASE WHEN r.dimension = 'day' THEN r.key END, r.rank, r.key
