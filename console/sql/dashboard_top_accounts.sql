-- The accounts that used the most tokens in the window.
SELECT u.account_id, coalesce(a.name, '#' || u.account_id) AS name,
       count(*) AS requests,
       sum(u.prompt_tokens::bigint + u.completion_tokens) AS tokens
FROM metering_usagerecord u
LEFT JOIN customers_account a ON a.id = u.account_id
WHERE u.started_at >= %(since)s
GROUP BY u.account_id, a.name
ORDER BY tokens DESC
LIMIT %(limit)s
