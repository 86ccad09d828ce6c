-- The backend's requests that got a first token, in a fit's span, in seconds since the epoch:
-- when each ended, its uncached prompt tokens, when it reached the backend (after the
-- gateway's queue), its first token and whether the gateway saw it. An answer that was not
-- streamed has none: the backend's usual time to first token for its prompt stands in, as in
-- energy_work.sql.
-- Parameters: backend, lower and upper (the started_at range: the ledger's partitions), after
-- (the earliest interval start), ttft_seconds, ttft_seconds_per_token.
SELECT date_part('epoch', ended_at), prompt,
       date_part('epoch', arrived),
       date_part('epoch', least(ended_at, greatest(arrived, coalesce(
           started_at + ttft_ms * interval '1 ms',
           arrived + (%(ttft_seconds)s + %(ttft_seconds_per_token)s * prompt) * interval '1 s'
       )))),
       ttft_ms IS NOT NULL
FROM (
    SELECT ended_at, started_at, ttft_ms, prompt_tokens - cached_prompt_tokens AS prompt,
           least(ended_at, started_at + queue_wait_ms * interval '1 ms') AS arrived
    FROM metering_usagerecord
    WHERE backend = %(backend)s AND started_at >= %(lower)s AND started_at < %(upper)s
        AND ended_at >= %(after)s AND completion_tokens > 0
) AS r
