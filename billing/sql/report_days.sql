-- The finance report's trend (billing/reports.py): per day of [since, until), tokens, revenue
-- and costs summed over the backends' daily margins (the rows that hold every cost).
-- Parameters: since, until, currency.
SELECT bucket AS day, sum(tokens) AS tokens, sum(energy_kwh) AS energy_kwh,
       sum(revenue) AS revenue, sum(energy_cost) AS energy_cost, sum(gpu_cost) AS gpu_cost
FROM billing_margin
WHERE grain = 'day' AND dimension = 'backend' AND currency = %(currency)s
  AND bucket >= %(since)s AND bucket < %(until)s
GROUP BY bucket
ORDER BY bucket
