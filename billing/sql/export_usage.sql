-- The usage export (billing/exports.py): the ledger's records that started in [since, until),
-- of one account or all (account_id null), of one project or all (project_id null). One row
-- per request, every column of the ledger and the project's name (null for records without a
-- project); energy null until attributed. Columns as stored: the export orders the rows (by
-- started_at, request_id) and writes them as CSV or Parquet. Parameters: since, until,
-- account_id, project_id.
SELECT u.request_id, u.account_id, u.project_id, p.name AS project_name, u.api_key_id, u.tier,
       u.model, u.backend, u.endpoint,
       u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens, u.reasoning_tokens,
       u.tokens_estimated, u.queue_wait_ms, u.ttft_ms, u.latency_ms, u.status_code, u.outcome,
       u.streamed, u.started_at, u.ended_at, u.energy_joules
FROM metering_usagerecord u
LEFT JOIN customers_project p ON p.id = u.project_id
WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(account_id)s::bigint IS NULL OR u.account_id = %(account_id)s::bigint)
  AND (%(project_id)s::bigint IS NULL OR u.project_id = %(project_id)s::bigint)
