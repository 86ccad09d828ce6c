-- One account's usage per UTC day in [since, until), for the portal's dashboard chart.
-- Parameters: account_id, since, until, project_ids (null: every project; else only these:
-- a developer's).
-- Returns per day with usage: day (UTC midnight), requests, errors (HTTP status 400 and up),
-- prompt_tokens, completion_tokens.
SELECT date_trunc('day', u.started_at AT TIME ZONE 'UTC') AS day,
       count(*) AS requests,
       count(*) FILTER (WHERE u.status_code >= 400) AS errors,
       coalesce(sum(u.prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(u.completion_tokens), 0) AS completion_tokens
FROM metering_usagerecord u
WHERE u.account_id = %(account_id)s
  AND u.started_at >= %(since)s AND u.started_at < %(until)s
  AND (%(project_ids)s::bigint[] IS NULL OR u.project_id = ANY (%(project_ids)s::bigint[]))
GROUP BY 1
ORDER BY 1
