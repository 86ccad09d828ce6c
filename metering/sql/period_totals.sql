-- Tokens each account has used today and this month (UTC), to rebuild quota counters.
-- Parameters: today (start of the UTC day), month (start of the UTC month).
SELECT account_id,
       coalesce(sum(prompt_tokens::bigint + completion_tokens)
                FILTER (WHERE started_at >= %(today)s), 0) AS today,
       sum(prompt_tokens::bigint + completion_tokens) AS month
FROM metering_usagerecord
WHERE started_at >= %(month)s
GROUP BY account_id
