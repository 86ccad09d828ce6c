-- Energy and tokens of the requests that started in [since, until), by hour (UTC), backend,
-- model and tier. Ratios use only records that have their energy; `unattributed` counts the
-- records that did work but have none yet (attribution pending, or no telemetry covered them).
-- Parameters: since, until.
SELECT date_trunc('hour', started_at) AS hour, backend, model, tier,
       count(*) FILTER (WHERE energy_joules IS NOT NULL) AS requests,
       count(*) FILTER (WHERE energy_joules IS NULL
                          AND prompt_tokens::bigint + completion_tokens > 0) AS unattributed,
       coalesce(sum(prompt_tokens) FILTER (WHERE energy_joules IS NOT NULL), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens) FILTER (WHERE energy_joules IS NOT NULL), 0)
           AS completion_tokens,
       coalesce(sum(energy_joules), 0) AS energy_j
FROM metering_usagerecord
WHERE started_at >= %(since)s AND started_at < %(until)s
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
