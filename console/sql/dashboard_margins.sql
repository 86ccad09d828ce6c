-- Revenue, cost and margin per day along one dimension (tier or model), from the margins job.
SELECT bucket, key, revenue, energy_cost + gpu_cost AS cost, margin
FROM billing_margin
WHERE grain = 'day' AND dimension = %(dimension)s AND bucket >= %(since)s
ORDER BY bucket, key
