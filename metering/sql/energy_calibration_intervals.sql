-- Per interval of energy_work: what the energy model's coefficients multiply (the sums of
-- the work components over its requests; decode seconds by batch knot, element by element),
-- the seconds nothing was active, the energy measured, the interval's length and the
-- engine's steps in it (null when not reported).
-- Intervals with no request are included: they pin the idle power.
-- Parameters: ids (the intervals energy_work was built for).
WITH per_interval AS (
    SELECT interval_id, range_agg(busy) AS busy,
           sum(prefill_tokens) AS prefill_tokens, sum(prefills) AS prefills,
           sum(decode_tokens) AS decode_tokens
    FROM energy_work
    GROUP BY interval_id
),
per_knot AS (
    SELECT interval_id, array_agg(seconds ORDER BY j) AS decode_seconds
    FROM (
        SELECT w.interval_id, u.j, sum(u.seconds) AS seconds
        FROM energy_work AS w, unnest(w.decode_seconds) WITH ORDINALITY AS u (seconds, j)
        GROUP BY w.interval_id, u.j
    ) AS k
    GROUP BY interval_id
)
SELECT greatest(0, date_part('epoch', i.ended_at - i.started_at) - coalesce(b.seconds, 0)),
       coalesce(t.prefill_tokens, 0), coalesce(t.prefills, 0),
       coalesce(d.decode_seconds, '{}'), coalesce(t.decode_tokens, 0),
       i.energy_j, date_part('epoch', i.ended_at - i.started_at), i.iterations::float8
FROM metering_energyinterval AS i
LEFT JOIN per_interval AS t ON t.interval_id = i.id
LEFT JOIN per_knot AS d ON d.interval_id = i.id
LEFT JOIN LATERAL (
    SELECT sum(date_part('epoch', upper(r) - lower(r))) AS seconds FROM unnest(t.busy) AS r
) AS b ON true
WHERE i.id = ANY(%(ids)s::bigint[])
