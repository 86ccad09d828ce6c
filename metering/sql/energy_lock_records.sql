-- Lock the usage records about to receive energy, in one order for every job, so that two jobs
-- whose intervals share a request wait for each other instead of deadlocking.
-- Parameters: lower, upper (the started_at range, for partition pruning).
SELECT NULL
FROM metering_usagerecord AS u
JOIN (SELECT DISTINCT request_id, started_at FROM energy_work) AS w
    USING (request_id, started_at)
WHERE u.started_at >= %(lower)s AND u.started_at < %(upper)s
ORDER BY u.request_id, u.started_at
FOR UPDATE OF u
