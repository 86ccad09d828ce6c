-- Claim the oldest intervals that are ready for attribution; rows another job holds are skipped.
-- Ready: every request that could have been active in the interval has its usage record (the
-- interval ended by its backend's horizon, see metering/attribution.py), or the interval is
-- older than the maximum lag. Backends without a calibration are not passed, so they wait.
-- Parameters: backends, horizons (parallel arrays), stale, limit.
SELECT i.id
FROM metering_energyinterval AS i
JOIN unnest(%(backends)s::text[], %(horizons)s::timestamptz[]) AS h (backend, horizon)
    ON h.backend = i.backend
WHERE i.attributed_at IS NULL
    AND (i.ended_at <= h.horizon OR i.ended_at < %(stale)s)
ORDER BY i.ended_at
LIMIT %(limit)s
FOR UPDATE OF i SKIP LOCKED
