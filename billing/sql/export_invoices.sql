-- The invoice export (billing/exports.py): invoices and credit notes whose period starts in
-- [since, until), of one account or all (account_id null), one row per line with its invoice's
-- fields beside it (an invoice without lines has one row, line fields null); with project_id,
-- only the lines of that project. A line's project: its id and name (null for the plan fee,
-- amounts credited and lines from before projects). Amounts: the
-- unrounded `amount`s and the rounded `*_minor`s in the currency's minor unit. Columns as
-- stored: the export orders the rows (by period_start, account_id, invoice_id, line_id) and
-- writes them as CSV or Parquet. Parameters: since, until, account_id, project_id.
SELECT i.id AS invoice_id, i.number, i.kind, i.status, i.account_id, a.name AS account_name,
       corrected.number AS corrects, i.period_start, i.period_end,
       i.currency, i.amount AS invoice_amount, i.total_minor, i.finalised_at, i.payment,
       l.id AS line_id, l.project_id, p.name AS project_name, l.item, l.tier, l.model,
       l.price_book_id, l.quantity, l.unit_price,
       l.amount, l.amount_minor, l.usage_from, l.usage_to
FROM billing_invoice i
JOIN customers_account a ON a.id = i.account_id
LEFT JOIN billing_invoice corrected ON corrected.id = i.corrects_id
LEFT JOIN billing_invoiceline l ON l.invoice_id = i.id
LEFT JOIN customers_project p ON p.id = l.project_id
WHERE i.period_start >= %(since)s AND i.period_start < %(until)s
  AND (%(account_id)s::bigint IS NULL OR i.account_id = %(account_id)s::bigint)
  AND (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s::bigint)
