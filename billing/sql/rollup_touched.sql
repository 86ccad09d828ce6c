-- The hours before `before` (by started_at) whose rollups changed since the last run
-- (billing/rollups.py), in order: those of the records stored in (arrived_after, arrived_by],
-- of the records corrected then (revised_at), and, for the energy intervals attributed in
-- (attributed_after, attributed_by], the intervals' own hours (their idle energy) and those of
-- the records of their backend that can have been active in them: started up to `max_lag`
-- before the first one (attribution's own bound) and ended after it. A superset is harmless:
-- an hour rebuilt is the same hour. The ledger is read through its BRIN indexes (stored_at,
-- started_at) and the partial index of corrected records: time in proportion to the records
-- read, not to the ledger. Parameters: arrived_after, arrived_by, attributed_after,
-- attributed_by, before, max_lag.
WITH attributed AS (
    SELECT backend, min(started_at) AS first, max(ended_at) AS last
    FROM metering_energyinterval
    WHERE attributed_at > %(attributed_after)s AND attributed_at <= %(attributed_by)s
      AND started_at < %(before)s
    GROUP BY backend
)
SELECT date_trunc('hour', started_at, 'UTC') FROM metering_usagerecord
WHERE stored_at > %(arrived_after)s AND stored_at <= %(arrived_by)s AND started_at < %(before)s
UNION
SELECT date_trunc('hour', started_at, 'UTC') FROM metering_usagerecord
WHERE revised_at > %(arrived_after)s AND revised_at <= %(arrived_by)s
  AND started_at < %(before)s
UNION
SELECT date_trunc('hour', e.started_at, 'UTC') FROM metering_energyinterval e
WHERE e.attributed_at > %(attributed_after)s AND e.attributed_at <= %(attributed_by)s
  AND e.started_at < %(before)s
UNION
SELECT date_trunc('hour', u.started_at, 'UTC')
FROM attributed a
JOIN metering_usagerecord u ON u.backend = a.backend
WHERE u.started_at >= a.first - %(max_lag)s AND u.started_at < least(a.last, %(before)s)
  AND u.ended_at > a.first
ORDER BY 1
