-- The decoding the engine's prefill times include: a request's prefill time is the step
-- that computed its prompt, and that step also advanced the sequences decoding then, if
-- any (a step with none runs no decode pass). Over the backend's streamed requests in the
-- range, at each one's first token (the gateway's): the share that had sequences decoding
-- beside them and the mean number of those sequences. A sequence decodes from its first
-- token (the gateway's, or the backend's usual time to first token for an answer that was
-- not streamed) to its end.
-- Parameters: backend, lower, upper (started_at range), ttft_seconds,
-- ttft_seconds_per_token.
WITH request AS (
    SELECT started_at + coalesce(
               ttft_ms * interval '1 ms',
               queue_wait_ms * interval '1 ms'
                   + (%(ttft_seconds)s + %(ttft_seconds_per_token)s
                      * (prompt_tokens - cached_prompt_tokens)) * interval '1 s'
           ) AS first_token,
           ended_at, ttft_ms IS NOT NULL AS timed
    FROM metering_usagerecord
    WHERE backend = %(backend)s AND started_at >= %(lower)s AND started_at < %(upper)s
        AND completion_tokens > 0
),
event AS (
    -- At one instant: ends, then the probes, then first tokens (a prompt does not decode
    -- beside itself, nor beside one computed with it).
    SELECT first_token AS at, 1 AS step, false AS probe FROM request
    WHERE ended_at > first_token
    UNION ALL
    SELECT ended_at, -1, false FROM request WHERE ended_at > first_token
    UNION ALL
    SELECT first_token, 0, true FROM request WHERE timed
),
batch AS (
    SELECT probe, sum(step) OVER (ORDER BY at, step ROWS UNBOUNDED PRECEDING) AS decoding
    FROM event
)
SELECT coalesce(avg((decoding > 0)::int::float8), 1), coalesce(avg(decoding)::float8, 0)
FROM batch
WHERE probe
