-- The finance report's invoice register (billing/reports.py): every finalised invoice and
-- credit note of the month in `currency`, with its account and the number a credit note
-- corrects, in number order.
-- Parameters: since, currency.
SELECT i.number, i.kind, i.account_id, a.name AS account_name, c.number AS corrects,
       i.period_start, i.period_end, i.total_minor, i.finalised_at, i.payment, i.paid_at
FROM billing_invoice i
JOIN customers_account a ON a.id = i.account_id
LEFT JOIN billing_invoice c ON c.id = i.corrects_id
WHERE i.status = 'finalised' AND i.period_start = %(since)s AND i.currency = %(currency)s
ORDER BY i.number
