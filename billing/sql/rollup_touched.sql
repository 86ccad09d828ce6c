-- The hours before `before` (by started_at) whose rollups changed since the last run
-- (billing/rollups.py), in order: those of the records stored in (arrived_after, arrived_by],
-- of the records corrected then (revised_at), and, for the energy intervals attributed since
-- (per backend: the first start and last end of those intervals, parallel arrays `backends`,
-- `firsts`, `lasts`), the intervals' own hours (their idle energy) and those of the records of
-- their backend that can have been active in them: started up to `max_lag` before the first
-- (attribution's own bound) and ended after it. A superset is harmless: an hour rebuilt is the
-- same hour. The ledger is read through its BRIN indexes (stored_at; started_at between the
-- constant bounds `lower` and `upper`) and the partial index of corrected records: time in
-- proportion to the records read, not to the ledger. Parameters: arrived_after, arrived_by,
-- before, max_lag, backends, firsts, lasts, lower, upper.
WITH attributed AS (
    SELECT * FROM unnest(%(backends)s::text[], %(firsts)s::timestamptz[],
                         %(lasts)s::timestamptz[]) AS a(backend, first, last)
)
SELECT date_trunc('hour', started_at, 'UTC') FROM metering_usagerecord
WHERE stored_at > %(arrived_after)s AND stored_at <= %(arrived_by)s AND started_at < %(before)s
UNION
SELECT date_trunc('hour', started_at, 'UTC') FROM metering_usagerecord
WHERE revised_at > %(arrived_after)s AND revised_at <= %(arrived_by)s
  AND started_at < %(before)s
UNION
SELECT hour
FROM attributed a
CROSS JOIN generate_series(date_trunc('hour', a.first, 'UTC'),
                           least(a.last, %(before)s) - interval '1 microsecond',
                           interval '1 hour') AS hour
UNION
SELECT date_trunc('hour', u.started_at, 'UTC')
FROM metering_usagerecord u
JOIN attributed a ON a.backend = u.backend
WHERE u.started_at >= %(lower)s AND u.started_at < %(upper)s
  AND u.started_at >= a.first - %(max_lag)s AND u.started_at < a.last AND u.ended_at > a.first
ORDER BY 1
