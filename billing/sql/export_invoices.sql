-- The invoice export (billing/exports.py): invoices and credit notes whose period starts in
-- [since, until), of one account or all (account_id null), one row per line with its invoice's
-- fields beside it (an invoice without lines has one row, line fields null); with project_id,
-- only the lines of that project. A line's project: its id and name (null for the plan fee,
-- amounts credited and lines from before projects). Amounts: the
-- unrounded `amount`s and the rounded `*_minor`s in the currency's minor unit. Times ISO 8601
-- in UTC. Parameters: since, until, account_id, project_id.
SELECT i.id AS invoice_id, i.number, i.kind, i.status, i.account_id, a.name AS account_name,
       corrected.number AS corrects,
       to_char(i.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS period_start,
       to_char(i.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS period_end,
       i.currency, i.amount AS invoice_amount, i.total_minor,
       to_char(i.finalised_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS finalised_at,
       i.payment,
       l.id AS line_id, l.project_id, p.name AS project_name, l.item, l.tier, l.model,
       l.price_book_id, l.quantity, l.unit_price,
       l.amount, l.amount_minor,
       to_char(l.usage_from AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS usage_from,
       to_char(l.usage_to AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS usage_to
FROM billing_invoice i
JOIN customers_account a ON a.id = i.account_id
LEFT JOIN billing_invoice corrected ON corrected.id = i.corrects_id
LEFT JOIN billing_invoiceline l ON l.invoice_id = i.id
LEFT JOIN customers_project p ON p.id = l.project_id
WHERE i.period_start >= %(since)s AND i.period_start < %(until)s
  AND (%(account_id)s::bigint IS NULL OR i.account_id = %(account_id)s::bigint)
  AND (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s::bigint)
ORDER BY i.period_start, i.account_id, i.id, l.id
