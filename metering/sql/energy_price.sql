-- Price each row of energy_work with its backend's energy model: the joules the model
-- expects the request to have used in the interval. Only the proportions within an interval
-- matter: the interval's measured energy is what gets shared.
-- Parameters: backends and, in the same order, each one's coefficients.
UPDATE energy_work AS w
SET work = c.prefill_j_per_token * w.prefill_tokens
         + c.prefill_j_per_request * w.prefills
         + c.decode_watts * w.decode_seconds
         + c.decode_j_per_token * w.decode_tokens
         + c.decode_log_watts * w.decode_log_seconds
FROM metering_energyinterval AS i,
     unnest(%(backends)s::text[], %(prefill_j_per_token)s::float8[],
            %(prefill_j_per_request)s::float8[], %(decode_watts)s::float8[],
            %(decode_j_per_token)s::float8[], %(decode_log_watts)s::float8[])
         AS c (backend, prefill_j_per_token, prefill_j_per_request, decode_watts,
               decode_j_per_token, decode_log_watts)
WHERE i.id = w.interval_id AND c.backend = i.backend
