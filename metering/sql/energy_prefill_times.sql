-- Per interval whose engine reported prefill times: the requests it timed, the sum of their
-- times, and from the ledger the uncached prompt tokens of the requests of its backend that
-- ended in the interval (the engine times a request's prefill when the request finishes, and
-- only one that got a first token).
-- Parameters: ids (intervals), lower and upper (the started_at range: the ledger's
-- partitions), after (the earliest interval start).
SELECT i.engine_prefills, i.engine_prefill_seconds,
       coalesce(sum(u.prompt_tokens - u.cached_prompt_tokens), 0)
FROM metering_energyinterval AS i
LEFT JOIN metering_usagerecord AS u
    ON u.backend = i.backend AND u.ended_at >= i.started_at AND u.ended_at < i.ended_at
        AND u.started_at >= %(lower)s AND u.started_at < %(upper)s AND u.ended_at >= %(after)s
        AND u.completion_tokens > 0
WHERE i.id = ANY(%(ids)s::bigint[]) AND i.engine_prefills IS NOT NULL
GROUP BY i.id
