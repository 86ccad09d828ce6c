-- One account's usage totals since a point in time (the start of today, of the month), of all
-- its projects or of one (project_id null: all).
-- Parameters: account_id, since, project_id.
SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_prompt_tokens), 0),
       coalesce(sum(completion_tokens), 0), coalesce(sum(reasoning_tokens), 0)
FROM metering_usagerecord
WHERE account_id = %(account_id)s AND started_at >= %(since)s
  AND (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s::bigint)
