-- One account's most recent usage records, newest first.
-- Parameters: account_id, since (bounds the partitions scanned), limit.
SELECT request_id, started_at, model, endpoint, prompt_tokens, cached_prompt_tokens,
       completion_tokens, reasoning_tokens, tokens_estimated, outcome, latency_ms
FROM metering_usagerecord
WHERE account_id = %(account_id)s AND started_at >= %(since)s
ORDER BY started_at DESC
LIMIT %(limit)s
