-- Time to first token, p50 and p99 per tier, of requests that started in the window.
SELECT tier,
       count(*) AS requests,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ttft_ms) AS p99_ms
FROM metering_usagerecord
WHERE started_at >= %(since)s
  AND ttft_ms IS NOT NULL
GROUP BY tier
ORDER BY tier
