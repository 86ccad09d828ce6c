-- Tokens used today and this month (UTC) by each project of each account, to rebuild quota
-- counters (gateway/limits.py adds an account's projects up for the account's own).
-- project_id is null for usage whose key was deleted before projects existed.
-- Parameters: today (start of the UTC day), month (start of the UTC month).
SELECT account_id, project_id,
       coalesce(sum(prompt_tokens::bigint + completion_tokens)
                FILTER (WHERE started_at >= %(today)s), 0) AS today,
       sum(prompt_tokens::bigint + completion_tokens) AS month
FROM metering_usagerecord
WHERE started_at >= %(month)s
GROUP BY account_id, project_id
