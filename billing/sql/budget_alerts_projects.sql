-- Record a ProjectBudgetAlert for every threshold (`percents`) a live project with a monthly
-- budget has reached in one month, once (the unique constraint keeps the first). Spend: the
-- project's usage started in [period_start, period_end), by budget_alerts.sql's rule (list
-- prices of the book in force when each request started, before included tokens and plan fees,
-- in billing's currency, no request fee for a request in fee_exempt; usage without a price
-- counts nothing), read from the rollups where they exist (whole days before day_rolled, hours
-- before rolled) and the ledger after them. A project's budget is in billing's currency.
-- The book in force and its price row: catalogue_book_span and catalogue_price_in_force
-- (catalogue/migrations/0002).
-- Parameters: period_start, period_end, day_rolled <= rolled (both within the period),
-- billing_currency, fee_exempt (outcomes, text[]), percents (int[]).
-- Returns the alerts recorded now: project_id, account_id, percent, spent, monthly_budget.
WITH budgets AS (
    SELECT id AS project_id, account_id, monthly_budget
    FROM customers_project
    WHERE monthly_budget IS NOT NULL AND archived_at IS NULL
),
rolled AS (
    SELECT bu.project_id, sum(r.revenue) AS spent
    FROM budgets bu
    JOIN billing_usagerollup r ON r.account_id = bu.account_id AND r.project_id = bu.project_id
    WHERE ((r.grain = 'day' AND r.bucket >= %(period_start)s AND r.bucket < %(day_rolled)s)
           OR (r.grain = 'hour' AND r.bucket >= %(day_rolled)s AND r.bucket < %(rolled)s))
    GROUP BY bu.project_id
),
-- The ledger after the rollups, per project, book, tier and model; read on the (account_id,
-- started_at) index, budgeted projects' accounts only (OFFSET 0: as in budget_alerts.sql).
usage AS (
    SELECT bu.project_id, bk.id AS book_id, u.tier, u.model,
           count(*) FILTER (WHERE u.outcome <> ALL (%(fee_exempt)s::text[])) AS requests,
           sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens) AS cached,
           sum(u.completion_tokens - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens) AS reasoning
    FROM budgets bu
    CROSS JOIN LATERAL (
        SELECT * FROM metering_usagerecord u
        WHERE u.account_id = bu.account_id AND u.project_id = bu.project_id
          AND u.started_at >= %(rolled)s AND u.started_at < %(period_end)s
        OFFSET 0
    ) u
    JOIN catalogue_book_span bk ON bk.currency = %(billing_currency)s
        AND u.started_at >= bk.effective_from AND u.started_at < bk.effective_to
    GROUP BY 1, 2, 3, 4
),
fresh AS (
    SELECT us.project_id,
           sum(us.input * p.input_per_million
               + us.cached * p.cached_input_per_million
               + us.output * p.output_per_million
               + us.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)
              ) * 0.000001
           + sum(us.requests * p.request_fee) AS spent
    FROM usage us
    CROSS JOIN LATERAL catalogue_price_in_force(us.book_id, us.tier, us.model) p
    GROUP BY us.project_id
),
spend AS (
    SELECT project_id, sum(spent) AS spent
    FROM (SELECT * FROM rolled UNION ALL SELECT * FROM fresh) parts
    GROUP BY project_id
),
inserted AS (
    INSERT INTO billing_projectbudgetalert (project_id, period_start, percent, spent, created_at)
    SELECT s.project_id, %(period_start)s, t.percent, s.spent, now()
    FROM spend s
    JOIN budgets bu ON bu.project_id = s.project_id
    CROSS JOIN LATERAL unnest(%(percents)s::int[]) AS t(percent)
    WHERE s.spent > 0 AND s.spent * 100 >= bu.monthly_budget * t.percent
      AND NOT EXISTS (SELECT FROM billing_projectbudgetalert a
                      WHERE a.project_id = s.project_id AND a.period_start = %(period_start)s
                        AND a.percent = t.percent)
    ON CONFLICT (project_id, period_start, percent) DO NOTHING
    RETURNING project_id, percent, spent
)
SELECT i.project_id, bu.account_id, i.percent, i.spent, bu.monthly_budget
FROM inserted i
JOIN budgets bu ON bu.project_id = i.project_id
ORDER BY i.project_id, i.percent
