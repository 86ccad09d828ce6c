-- Per interval of energy_work: what the energy model's coefficients multiply (the sums of
-- the work components over its requests), the seconds nothing was active, the energy
-- measured, the interval's length and the engine's steps in it (null when not reported).
-- Intervals with no request are included: they pin the idle power.
-- Parameters: ids (the intervals energy_work was built for).
WITH per_interval AS (
    SELECT interval_id, range_agg(busy) AS busy,
           sum(prefill_tokens) AS prefill_tokens, sum(prefills) AS prefills,
           sum(decode_seconds) AS decode_seconds, sum(decode_tokens) AS decode_tokens,
           sum(decode_log_seconds) AS decode_log_seconds
    FROM energy_work
    GROUP BY interval_id
)
SELECT greatest(0, date_part('epoch', i.ended_at - i.started_at) - coalesce(b.seconds, 0)),
       coalesce(t.prefill_tokens, 0), coalesce(t.prefills, 0),
       coalesce(t.decode_seconds, 0), coalesce(t.decode_tokens, 0),
       i.energy_j, date_part('epoch', i.ended_at - i.started_at), i.iterations::float8,
       coalesce(t.decode_log_seconds, 0)
FROM metering_energyinterval AS i
LEFT JOIN per_interval AS t ON t.interval_id = i.id
LEFT JOIN LATERAL (
    SELECT sum(date_part('epoch', upper(r) - lower(r))) AS seconds FROM unnest(t.busy) AS r
) AS b ON true
WHERE i.id = ANY(%(ids)s::bigint[])
