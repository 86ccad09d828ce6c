-- What a close bills of its own month (docs/billing.md, "Rollups"), read from the daily rollups
-- instead of the ledger: the same sums as invoice_usage.sql with stored_after null, since the
-- close first runs the rollups to its cutoff (billing/rollups.py: every hour holds the records
-- stored by then). Per account, tier, model, book and project (a row without a project counts
-- in the account's default one). Unpriced usage has a null book here: it is reported, never
-- billed, either way. Parameters: since, until (whole days), month.
SELECT r.account_id, %(month)s::timestamptz AS month, r.tier, r.model,
       r.price_book_id AS book_id, coalesce(r.project_id, d.id) AS project_id,
       sum(r.prompt_tokens - r.cached_prompt_tokens) AS input,
       sum(r.cached_prompt_tokens) AS cached_input,
       sum(r.completion_tokens - r.reasoning_tokens) AS output,
       sum(r.reasoning_tokens) AS reasoning,
       sum(r.fee_requests) AS requests
FROM billing_usagerollup r
LEFT JOIN customers_project d ON d.account_id = r.account_id AND d.is_default
WHERE r.grain = 'day' AND r.bucket >= %(since)s AND r.bucket < %(until)s AND r.requests > 0
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 1, 2, 3, 4, 5, 6
