-- What one price book would have charged for the usage that started in [since, until), per tier
-- and model, beside what that usage was rated: both by the rule of docs/billing.md ("Rating"),
-- as usage_rated.sql rates a record. "Rated" is at the book of `currency` in force at each
-- record's started_at (catalogue_book_span); "book" at the book `book_id`, whatever its start;
-- each at the book's (tier, model) row, else its (tier, '*') row (catalogue_price_in_force).
-- Rating is linear and exact, so the usage is summed per tier, model and book in force first and
-- each sum rated once: the same amounts as rating each record and adding them up.
-- Parameters: since, until, currency, book_id, fee_exempt.
-- Returns per tier and model: requests, tokens (prompt + completion), rated_unpriced and
-- book_unpriced (requests without a price row), and the amounts rated and book (exact, zero
-- where unpriced).
WITH usage AS (
    SELECT u.tier, u.model, b.id AS book_in_force,
           count(*) AS requests,
           sum(u.prompt_tokens + u.completion_tokens) AS tokens,
           sum(u.prompt_tokens - u.cached_prompt_tokens) AS input,
           sum(u.cached_prompt_tokens) AS cached_input,
           sum(u.completion_tokens - u.reasoning_tokens) AS output,
           sum(u.reasoning_tokens) AS reasoning,
           count(*) FILTER (WHERE NOT u.outcome = ANY (%(fee_exempt)s::text[])) AS fee_requests
    FROM metering_usagerecord u
    LEFT JOIN catalogue_book_span b ON b.currency = %(currency)s
        AND u.started_at >= b.effective_from AND u.started_at < b.effective_to
    WHERE u.started_at >= %(since)s AND u.started_at < %(until)s
    GROUP BY u.tier, u.model, b.id
)
SELECT u.tier, u.model,
       sum(u.requests)::bigint AS requests,
       sum(u.tokens)::bigint AS tokens,
       (coalesce(sum(u.requests) FILTER (WHERE r.id IS NULL), 0))::bigint AS rated_unpriced,
       (coalesce(sum(u.requests) FILTER (WHERE p.id IS NULL), 0))::bigint AS book_unpriced,
       coalesce(sum(u.input * r.input_per_million * 0.000001
                    + u.cached_input * r.cached_input_per_million * 0.000001
                    + u.output * r.output_per_million * 0.000001
                    + u.reasoning * coalesce(r.reasoning_per_million, r.output_per_million)
                      * 0.000001
                    + u.fee_requests * r.request_fee), 0) AS rated,
       coalesce(sum(u.input * p.input_per_million * 0.000001
                    + u.cached_input * p.cached_input_per_million * 0.000001
                    + u.output * p.output_per_million * 0.000001
                    + u.reasoning * coalesce(p.reasoning_per_million, p.output_per_million)
                      * 0.000001
                    + u.fee_requests * p.request_fee), 0) AS book
FROM usage u
LEFT JOIN LATERAL catalogue_price_in_force(u.book_in_force, u.tier, u.model) r ON true
LEFT JOIN LATERAL catalogue_price_in_force(%(book_id)s, u.tier, u.model) p ON true
GROUP BY u.tier, u.model
ORDER BY u.tier, u.model
