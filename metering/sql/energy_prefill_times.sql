-- The intervals whose engine reported prefill times: their bounds (seconds since the epoch),
-- the requests the engine timed in them and the sum of their times (it times a request's
-- prefill when the request finishes, and only one that got a first token).
-- Parameters: ids (intervals).
SELECT date_part('epoch', started_at), date_part('epoch', ended_at),
       engine_prefills, engine_prefill_seconds
FROM metering_energyinterval
WHERE id = ANY(%(ids)s::bigint[]) AND engine_prefills IS NOT NULL
