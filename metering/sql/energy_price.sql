-- Price each row of energy_work with its backend's energy model: the joules the model
-- expects the request to have used in the interval. Only the proportions within an interval
-- matter: the interval's measured energy is what gets shared.
-- Parameters: backends and, in the same order, each one's coefficients; decode_watts is one
-- row per backend of its power at each of the BATCH_KNOTS (the curve's last value repeated).
UPDATE energy_work AS w
SET work = c.prefill_j_per_token * w.prefill_tokens
         + c.prefill_j_per_request * w.prefills
         + c.decode_j_per_token * w.decode_tokens
         + coalesce((SELECT sum(u.seconds * (%(decode_watts)s::float8[])[c.k][u.j])
                     FROM unnest(w.decode_seconds) WITH ORDINALITY AS u (seconds, j)), 0)
FROM metering_energyinterval AS i,
     unnest(%(backends)s::text[], %(prefill_j_per_token)s::float8[],
            %(prefill_j_per_request)s::float8[], %(decode_j_per_token)s::float8[])
         WITH ORDINALITY AS c (backend, prefill_j_per_token, prefill_j_per_request,
                               decode_j_per_token, k)
WHERE i.id = w.interval_id AND c.backend = i.backend
