-- The usage export (billing/exports.py): the ledger's records that started in [since, until),
-- of one account or all (account_id null), in the order they started. One row per request,
-- every column of the ledger; times ISO 8601 in UTC, booleans true/false, energy null until
-- attributed. Parameters: since, until, account_id.
SELECT request_id, account_id, api_key_id, tier, model, backend, endpoint,
       prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens,
       tokens_estimated::text AS tokens_estimated,
       queue_wait_ms, ttft_ms, latency_ms, status_code, outcome,
       streamed::text AS streamed,
       to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS started_at,
       to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ended_at,
       energy_joules
FROM metering_usagerecord
WHERE started_at >= %(since)s AND started_at < %(until)s
  AND (%(account_id)s::bigint IS NULL OR account_id = %(account_id)s::bigint)
ORDER BY started_at, request_id
