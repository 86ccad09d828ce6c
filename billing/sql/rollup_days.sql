-- The daily usage rollups of [since, until) (whole UTC days), rebuilt as the sums of their
-- hourly rows, of every account or of `accounts` (null: all); the caller deletes the same
-- rows first, in the same transaction. Parameters: since, until, accounts.
INSERT INTO billing_usagerollup
    (grain, bucket, account_id, project_id, api_key_id, tier, model, backend, price_book_id,
     requests, fee_requests, prompt_tokens, cached_prompt_tokens, completion_tokens,
     reasoning_tokens, energy_joules, revenue, energy_cost, gpu_cost, measured_requests,
     measured_tokens, costed_tokens, costed_measured_tokens)
SELECT 'day', date_trunc('day', bucket, 'UTC'), account_id, project_id, api_key_id, tier, model,
       backend, price_book_id, sum(requests), sum(fee_requests), sum(prompt_tokens),
       sum(cached_prompt_tokens), sum(completion_tokens), sum(reasoning_tokens),
       sum(energy_joules::numeric)::float8, sum(revenue), sum(energy_cost), sum(gpu_cost),
       sum(measured_requests), sum(measured_tokens), sum(costed_tokens),
       sum(costed_measured_tokens)
FROM billing_usagerollup
WHERE grain = 'hour' AND bucket >= %(since)s AND bucket < %(until)s
  AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s::bigint[]))
GROUP BY 2, 3, 4, 5, 6, 7, 8, 9
ORDER BY 2, 3, 4, 5, 6, 7, 8, 9
