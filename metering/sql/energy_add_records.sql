-- Add each request's shares of the claimed intervals' attributed energy to its usage record.
-- A request's share of an interval is attributed_j * its work / all work in the interval.
-- Parameters: lower, upper (the started_at range, for partition pruning).
WITH total AS (
    SELECT interval_id, sum(work) AS work FROM energy_work GROUP BY interval_id
),
share AS (
    SELECT w.request_id, w.started_at, sum(i.attributed_j * w.work / t.work) AS joules
    FROM energy_work AS w
    JOIN total AS t USING (interval_id)
    JOIN metering_energyinterval AS i ON i.id = w.interval_id
    WHERE t.work > 0
    GROUP BY w.request_id, w.started_at
)
UPDATE metering_usagerecord AS u
SET energy_joules = coalesce(u.energy_joules, 0) + share.joules
FROM share
WHERE u.request_id = share.request_id AND u.started_at = share.started_at
    AND u.started_at >= %(lower)s AND u.started_at < %(upper)s
