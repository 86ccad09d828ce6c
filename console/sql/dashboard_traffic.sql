-- Requests and tokens per minute since %(since)s, by when they ended.
-- started_at bounds the scan (partition pruning): nothing older than the window plus an hour.
SELECT date_trunc('minute', ended_at) AS minute,
       count(*) AS requests,
       sum(prompt_tokens::bigint + completion_tokens) AS tokens
FROM metering_usagerecord
WHERE started_at >= %(since)s - interval '1 hour'
  AND ended_at >= %(since)s
GROUP BY 1
ORDER BY 1
