-- The finance report's split of what the month's invoices billed (billing/reports.py): the
-- lines of its finalised invoices (not credit notes) in `currency`, per tier, part and usage
-- month, in minor units (they add up to the invoices' total_minor exactly) and unrounded.
-- Parts: usage (the token classes and request fees), included (included tokens, negative),
-- plan_fee, other. A usage or included line whose usage month is before the period is a
-- prior-period line (usage that arrived after its month was closed, docs/billing.md).
-- Parameters: since, currency.
SELECT l.tier,
       CASE WHEN l.item IN ('input', 'cached_input', 'output', 'reasoning', 'request_fee')
                THEN 'usage'
            WHEN l.item IN ('included', 'plan_fee') THEN l.item
            ELSE 'other' END AS part,
       date_trunc('month', l.usage_from, 'UTC') AS usage_month,
       sum(l.amount_minor) AS amount_minor, sum(l.amount) AS amount, sum(l.quantity) AS quantity
FROM billing_invoiceline l
JOIN billing_invoice i ON i.id = l.invoice_id
WHERE i.status = 'finalised' AND i.kind = 'invoice' AND i.period_start = %(since)s
  AND i.currency = %(currency)s
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
