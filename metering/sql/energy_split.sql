-- Split each claimed interval's measured energy in two. Idle: the backend's idle power times
-- the part of the interval in which no request was active, never more than was measured, and
-- all of it when the model prices no work in the interval. Attributed: the rest, shared by
-- work afterwards. attributed_j + idle_j = energy_j by construction.
-- attributed_at is the database's clock when the row is written (metering.services.
-- attributions_cutoff splits attributions cleanly by it, for billing's rollups).
-- Parameters: ids (claimed intervals), backends, idle_watts (parallel arrays).
WITH per_interval AS (
    SELECT interval_id, count(*) AS requests, sum(work) AS work, range_agg(busy) AS busy
    FROM energy_work
    GROUP BY interval_id
),
split AS (
    SELECT i.id, coalesce(t.requests, 0) AS requests,
           CASE
               WHEN coalesce(t.work, 0) <= 0 THEN i.energy_j
               ELSE least(i.energy_j, c.idle_watts * greatest(
                   0, date_part('epoch', i.ended_at - i.started_at) - b.seconds))
           END AS idle_j
    FROM metering_energyinterval AS i
    JOIN unnest(%(backends)s::text[], %(idle_watts)s::float8[]) AS c (backend, idle_watts)
        USING (backend)
    LEFT JOIN per_interval AS t ON t.interval_id = i.id
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(date_part('epoch', upper(r) - lower(r))), 0) AS seconds
        FROM unnest(t.busy) AS r
    ) AS b ON true
    WHERE i.id = ANY(%(ids)s::bigint[])
)
UPDATE metering_energyinterval AS i
SET idle_j = split.idle_j, attributed_j = i.energy_j - split.idle_j,
    requests = split.requests, attributed_at = clock_timestamp()
FROM split
WHERE i.id = split.id
RETURNING i.energy_j, i.idle_j, i.attributed_j, i.requests
