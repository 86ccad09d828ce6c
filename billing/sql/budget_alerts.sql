-- Record a BudgetAlert for every threshold a budgeted account's spend has reached in one month,
-- once (the unique constraint keeps the first). Spend: the account's usage started in
-- [period_start, period_end) at list prices, before included tokens and plan fees (the amount
-- the gateway's hard cap counts), rated by the rule of docs/billing.md ("Rating") with the
-- book in force when each request started, in billing's currency; a request that failed on
-- every backend (an outcome in fee_exempt) pays no request fee. Usage without a price counts
-- nothing. Only budgets in billing's currency are looked at (one in another currency cannot be
-- compared with the spend: billing/budgets.py logs them). Spend reads the rollups where they
-- exist (whole days before day_rolled, hours before rolled: the same rule, already summed) and
-- the ledger after them.
-- The book in force and its price row: catalogue_book_span and catalogue_price_in_force
-- (catalogue/migrations/0002).
-- Parameters: period_start, period_end, day_rolled <= rolled (both within the period),
-- billing_currency, fee_exempt (outcomes, text[]).
-- Returns the alerts recorded now: account_id, percent, spent, monthly_limit, currency.
WITH budgets AS (
    SELECT account_id, currency, monthly_limit, alert_percents
    FROM customers_budget
    WHERE cardinality(alert_percents) > 0 AND currency = %(billing_currency)s
),
rolled AS (
    SELECT r.account_id, sum(r.revenue) AS spent
    FROM budgets bu
    JOIN billing_usagerollup r ON r.account_id = bu.account_id
    WHERE ((r.grain = 'day' AND r.bucket >= %(period_start)s AND r.bucket < %(day_rolled)s)
           OR (r.grain = 'hour' AND r.bucket >= %(day_rolled)s AND r.bucket < %(rolled)s))
    GROUP BY r.account_id
),
-- The ledger after the rollups, summed before pricing: one row per account, book, tier and
-- model. Read account by account on the (account_id, started_at) index, budgeted accounts only
-- (OFFSET 0 keeps the planner from flattening the LATERAL subquery into a scan of the whole
-- month).
usage AS (
    SELECT bu.account_id, bk.id AS book_id, u.tier, u.model,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS requests,
           sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens) AS cached,
           sum(u.completion_tokens - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens) AS reasoning
    FROM budgets bu
    CROSS JOIN LATERAL (
        SELECT * FROM metering_usagerecord u
        WHERE u.account_id = bu.account_id
          AND u.started_at >= %(rolled)s AND u.started_at < %(period_end)s
        OFFSET 0
    ) u
    JOIN catalogue_book_span bk ON bk.currency = %(billing_currency)s
        AND u.started_at >= bk.effective_from AND u.started_at < bk.effective_to
    GROUP BY 1, 2, 3, 4
),
-- Exact: prices have 6 decimal places, and multiplying adds scales (no division).
fresh AS (
    SELECT us.account_id,
           sum(us.input * p.input_per_million
               + us.cached * p.cached_input_per_million
               + us.output * p.output_per_million
               + us.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)
              ) * 0.000001
           + sum(us.requests * p.request_fee) AS spent
    FROM usage us
    CROSS JOIN LATERAL catalogue_price_in_force(us.book_id, us.tier, us.model) p
    GROUP BY us.account_id
),
spend AS (
    SELECT account_id, sum(spent) AS spent
    FROM (SELECT * FROM rolled UNION ALL SELECT * FROM fresh) parts
    GROUP BY account_id
),
inserted AS (
    INSERT INTO billing_budgetalert (account_id, period_start, percent, spent, created_at)
    SELECT s.account_id, %(period_start)s, t.percent, s.spent, now()
    FROM spend s
    JOIN budgets bu ON bu.account_id = s.account_id
    CROSS JOIN LATERAL unnest(bu.alert_percents) AS t(percent)
    WHERE s.spent > 0 AND s.spent * 100 >= bu.monthly_limit * t.percent
      AND NOT EXISTS (SELECT FROM billing_budgetalert a
                      WHERE a.account_id = s.account_id AND a.period_start = %(period_start)s
                        AND a.percent = t.percent)
    ON CONFLICT (account_id, period_start, percent) DO NOTHING
    RETURNING account_id, percent, spent
)
SELECT i.account_id, i.percent, i.spent, bu.monthly_limit, bu.currency
FROM inserted i
JOIN budgets bu ON bu.account_id = i.account_id
ORDER BY i.account_id, i.percent
