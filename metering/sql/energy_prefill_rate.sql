-- A backend's time to first token after the gateway's queue, as a line in the uncached
-- prompt tokens, over its recent streamed requests: fixed seconds (the intercept: the prefill
-- pass's own, plus network and scheduling) and seconds per prompt token (the slope).
-- Parameters: backend, lower, upper (started_at range).
SELECT greatest(0, coalesce(regr_intercept(ttft, prompt), 0)) / 1000,
       greatest(0, coalesce(regr_slope(ttft, prompt), 0)) / 1000,
       regr_count(ttft, prompt)
FROM (
    SELECT ttft_ms - queue_wait_ms AS ttft, prompt_tokens - cached_prompt_tokens AS prompt
    FROM metering_usagerecord
    WHERE backend = %(backend)s AND started_at >= %(lower)s AND started_at < %(upper)s
        AND ttft_ms IS NOT NULL AND outcome = 'ok'
) AS r
