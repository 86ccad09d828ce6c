-- The usage the included tokens cover whole (docs/billing.md, "Included tokens"), from the
-- hourly rollups: each account's rows of its plan's tier in the hours [since, whole_until)
-- (invoice_included_hours.sql), per account, tier, model, book and project, by token class.
-- Parameters: since, month, and three arrays of the same length: accounts, tiers, and
-- whole_until.
SELECT r.account_id, %(month)s::timestamptz AS month, r.tier, r.model,
       r.price_book_id AS book_id, coalesce(r.project_id, d.id) AS project_id,
       sum(r.prompt_tokens - r.cached_prompt_tokens) AS input,
       sum(r.cached_prompt_tokens) AS cached_input,
       sum(r.completion_tokens - r.reasoning_tokens) AS output,
       sum(r.reasoning_tokens) AS reasoning
FROM unnest(%(accounts)s::bigint[], %(tiers)s::text[], %(whole_until)s::timestamptz[])
    AS p(account_id, tier, whole_until)
JOIN billing_usagerollup r ON r.account_id = p.account_id AND r.tier = p.tier
LEFT JOIN customers_project d ON d.account_id = r.account_id AND d.is_default
WHERE r.grain = 'hour' AND r.bucket >= %(since)s AND r.bucket < p.whole_until
  AND r.requests > 0
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
