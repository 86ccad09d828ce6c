-- The hourly usage rollups of [since, until), rebuilt from the ledger's records that reached
-- it by `arrived_by` (stored_at; null: stored before arrivals were recorded): one row per
-- hour, account, project (the records'; null where they carry none), key, tier, model, backend
-- and price book (null: unpriced), and one row per hour and backend whose cost no request
-- carries (account 0, no project, tier and model ''). `since` is
-- a whole hour; `until` is one too, or the present inside the hour in progress, whose GPU
-- time then counts up to `until`. The caller deletes the same hours first, in the same
-- transaction. docs/billing.md:
--   revenue:     the rule of "Rating" (billing/rating.py), on token sums: rating is linear and
--                exact, so it equals the sum of the records' own ratings; a request that
--                failed on every backend pays no request fee (fee_exempt outcomes);
--   energy_cost: each record's energy (kWh) x electricity_per_kwh x pue of the backend's cost
--                model in force at its started_at, plus its share of the hour's idle energy
--                cost;
--   gpu_cost:    its share of the backend's GPU cost for the hour (gpu_cost_per_hour, pro rata
--                when the cost model changes within the hour);
--   shares:      of the backend's requests in the hour, in proportion to their energy (to
--                their tokens when none has energy, to their count when none has tokens);
--   energy:      the records' attributed joules plus their share of the hour's idle joules;
--   coverage:    requests whose energy is known (attributed, or nothing to measure: no
--                tokens) and the tokens with attributed energy (measured); tokens of
--                requests with a cost model in force (costed), and those measured too.
-- Energy is summed in whole millijoules, integers: exact, whatever order rows are read in.
-- The book in force: catalogue_book_span; its price row: catalogue_price_in_force's rule
-- (catalogue/migrations/0002).
-- Token sums are 64-bit. Parameters: since, until, arrived_by, currency, fee_exempt.
WITH costs AS (
    SELECT id, backend, electricity_per_kwh, pue, gpu_cost_per_hour, effective_from,
           lead(effective_from, 1, 'infinity')
               OVER (PARTITION BY backend ORDER BY effective_from) AS effective_to
    FROM billing_costmodel
    WHERE currency = %(currency)s
),
-- The ledger summed per hour and rollup key, and per book and cost model in force when each
-- request started (energy in whole millijoules: integer sums are exact and fast).
ledger AS (
    SELECT date_trunc('hour', u.started_at, 'UTC') AS bucket,
           u.account_id, u.project_id, u.api_key_id, u.tier, u.model, u.backend,
           b.id AS book_id, c.id AS cost_id,
           count(*) AS requests,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS fee_requests,
           sum(u.prompt_tokens) AS prompt_tokens,
           sum(u.cached_prompt_tokens) AS cached_prompt_tokens,
           sum(u.completion_tokens) AS completion_tokens,
           sum(u.reasoning_tokens) AS reasoning_tokens,
           coalesce(sum((u.energy_joules * 1000)::bigint), 0) AS energy_mj,
           count(*) FILTER (WHERE u.energy_joules IS NOT NULL
                              OR u.prompt_tokens::bigint + u.completion_tokens = 0)
               AS measured_requests,
           coalesce(sum(u.prompt_tokens::bigint + u.completion_tokens)
                        FILTER (WHERE u.energy_joules IS NOT NULL), 0) AS measured_tokens
    FROM metering_usagerecord u
    LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
        AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
    LEFT JOIN costs c ON c.backend = u.backend
                     AND u.started_at >= c.effective_from AND u.started_at < c.effective_to
    WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
      AND (u.stored_at IS NULL OR u.stored_at <= %(arrived_by)s)
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
),
-- Priced: the book's (tier, model) row (pe), else the tier's '*' row (ps): the rule of
-- catalogue_price_in_force, written as two hash joins because this runs once per ledger row
-- (EXPLAIN ANALYZE, a month of 1M records: 4.0 s; joining the function LATERAL, per row or
-- per distinct book, tier and model, 4.45-4.9 s). Summed again per rollup key, where usage
-- of two books without a price is one unpriced row.
usage AS (
    SELECT l.bucket, l.account_id, l.project_id, l.api_key_id, l.tier, l.model, l.backend,
           p.price_book_id, p.id AS price_id,
           sum(l.requests) AS requests,
           sum(l.fee_requests) AS fee_requests,
           sum(l.prompt_tokens) AS prompt_tokens,
           sum(l.cached_prompt_tokens) AS cached_prompt_tokens,
           sum(l.completion_tokens) AS completion_tokens,
           sum(l.reasoning_tokens) AS reasoning_tokens,
           sum(l.energy_mj) / 1000.0 AS energy_j,
           coalesce(sum(l.energy_mj * c.electricity_per_kwh * c.pue), 0) / 3600000000
               AS own_energy_cost,
           sum(l.measured_requests) AS measured_requests,
           sum(l.measured_tokens) AS measured_tokens,
           coalesce(sum(l.prompt_tokens + l.completion_tokens)
                        FILTER (WHERE l.cost_id IS NOT NULL), 0) AS costed_tokens,
           coalesce(sum(l.measured_tokens) FILTER (WHERE l.cost_id IS NOT NULL), 0)
               AS costed_measured_tokens
    FROM ledger l
    LEFT JOIN catalogue_price pe ON pe.price_book_id = l.book_id AND pe.tier = l.tier
                              AND pe.model = l.model
    LEFT JOIN catalogue_price ps ON ps.price_book_id = l.book_id AND ps.tier = l.tier
                              AND ps.model = '*'
    LEFT JOIN catalogue_price p ON p.id = coalesce(pe.id, ps.id)
    LEFT JOIN costs c ON c.id = l.cost_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
),
gpu AS (
    SELECT h.bucket, c.backend,
           sum(c.gpu_cost_per_hour
               * extract(epoch FROM least(h.bucket + interval '1 hour', c.effective_to,
                                          %(until)s::timestamptz)
                                    - greatest(h.bucket, c.effective_from))
               / 3600) AS gpu_cost
    FROM generate_series(%(since)s::timestamptz,
                         %(until)s::timestamptz - interval '1 microsecond',
                         interval '1 hour') AS h(bucket)
    JOIN costs c ON c.effective_from < least(h.bucket + interval '1 hour', %(until)s)
                AND c.effective_to > h.bucket
    GROUP BY 1, 2
),
idle AS (
    SELECT date_trunc('hour', e.started_at, 'UTC') AS bucket, e.backend,
           sum(e.idle_j::numeric) AS idle_j,
           coalesce(sum(e.idle_j::numeric * c.electricity_per_kwh * c.pue), 0) / 3600000
               AS idle_cost
    FROM metering_energyinterval e
    LEFT JOIN costs c ON c.backend = e.backend
                     AND e.started_at >= c.effective_from AND e.started_at < c.effective_to
    WHERE e.started_at >= %(since)s AND e.started_at < %(until)s AND e.idle_j IS NOT NULL
    GROUP BY 1, 2
),
overhead AS (
    SELECT coalesce(g.bucket, i.bucket) AS bucket, coalesce(g.backend, i.backend) AS backend,
           coalesce(g.gpu_cost, 0) AS gpu_cost,
           coalesce(i.idle_j, 0) AS idle_j, coalesce(i.idle_cost, 0) AS idle_cost
    FROM gpu g
    FULL JOIN idle i ON i.bucket = g.bucket AND i.backend = g.backend
),
-- Each row's share of its hour's backend costs (the hour's totals by window).
shared AS (
    SELECT us.*,
           CASE WHEN sum(us.energy_j) OVER w > 0 THEN us.energy_j / sum(us.energy_j) OVER w
                WHEN sum(us.prompt_tokens + us.completion_tokens) OVER w > 0
                    THEN (us.prompt_tokens + us.completion_tokens)::numeric
                         / sum(us.prompt_tokens + us.completion_tokens) OVER w
                ELSE us.requests::numeric / sum(us.requests) OVER w
           END AS share
    FROM usage us
    WINDOW w AS (PARTITION BY us.bucket, us.backend)
)
INSERT INTO billing_usagerollup
    (grain, bucket, account_id, project_id, api_key_id, tier, model, backend, price_book_id,
     requests, fee_requests, prompt_tokens, cached_prompt_tokens, completion_tokens,
     reasoning_tokens, energy_joules, revenue, energy_cost, gpu_cost, measured_requests,
     measured_tokens, costed_tokens, costed_measured_tokens)
SELECT 'hour', s.bucket, s.account_id, s.project_id, s.api_key_id, s.tier, s.model, s.backend,
       s.price_book_id, s.requests, s.fee_requests, s.prompt_tokens, s.cached_prompt_tokens,
       s.completion_tokens, s.reasoning_tokens,
       (s.energy_j + s.share * coalesce(o.idle_j, 0))::float8,
       coalesce((s.prompt_tokens - s.cached_prompt_tokens) * p.input_per_million
                + s.cached_prompt_tokens * p.cached_input_per_million
                + (s.completion_tokens - s.reasoning_tokens) * p.output_per_million
                + s.reasoning_tokens * coalesce(p.reasoning_per_million, p.output_per_million),
                0) * 0.000001
       + coalesce(s.fee_requests * p.request_fee, 0),
       s.own_energy_cost + s.share * coalesce(o.idle_cost, 0),
       s.share * coalesce(o.gpu_cost, 0),
       s.measured_requests, s.measured_tokens, s.costed_tokens, s.costed_measured_tokens
FROM shared s
LEFT JOIN catalogue_price p ON p.id = s.price_id
LEFT JOIN overhead o ON o.bucket = s.bucket AND o.backend = s.backend
UNION ALL
SELECT 'hour', o.bucket, 0, NULL, 0, '', '', o.backend, NULL, 0, 0, 0, 0, 0, 0, o.idle_j::float8, 0,
       o.idle_cost, o.gpu_cost, 0, 0, 0, 0
FROM overhead o
WHERE NOT EXISTS (SELECT FROM usage us WHERE us.bucket = o.bucket AND us.backend = o.backend)
