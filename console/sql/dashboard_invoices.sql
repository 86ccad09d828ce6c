-- Invoices by status and payment state.
SELECT status, payment, count(*) AS invoices, coalesce(sum(total_minor), 0) AS total_minor
FROM billing_invoice
WHERE kind = 'invoice'
GROUP BY status, payment
ORDER BY status, payment
