-- What each backend's telemetry measured in the intervals that started in [since, until), by
-- hour (UTC): attributed to requests, idle, and not attributed yet.
-- Parameters: since, until.
SELECT date_trunc('hour', started_at) AS hour, backend,
       count(*) AS intervals,
       sum(energy_j) AS measured_j,
       coalesce(sum(attributed_j), 0) AS attributed_j,
       coalesce(sum(idle_j), 0) AS idle_j,
       coalesce(sum(energy_j) FILTER (WHERE attributed_at IS NULL), 0) AS pending_j,
       count(*) FILTER (WHERE counter_reset) AS counter_resets
FROM metering_energyinterval
WHERE started_at >= %(since)s AND started_at < %(until)s
GROUP BY 1, 2
ORDER BY 1, 2
