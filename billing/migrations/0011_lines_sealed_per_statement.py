"""Lines added to an invoice are checked once per statement, not once per line.

The seal (0006) refused a line added to a finalised invoice with a row trigger that locked the
invoice FOR SHARE for every line: a close that writes 250,000 lines by COPY locked invoices
250,000 times (4 of its 6 seconds writing them, at 10M records a month). The same check now
runs after each INSERT statement over its new lines (a transition table), locking each of
their invoices once; a line of a finalised invoice still aborts the statement. Updates and
deletes keep the row trigger.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_invoiceline_frozen_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice billing_invoice;
BEGIN
    -- FOR SHARE waits for an invoice being finalised and reads it as committed.
    FOR invoice IN
        SELECT * FROM billing_invoice
        WHERE id IN (SELECT invoice_id FROM new_lines)
        ORDER BY id FOR SHARE
    LOOP
        IF invoice.status = 'finalised' THEN
            RAISE EXCEPTION 'invoice % is finalised: its lines cannot change; '
                            'correct it with a credit note', invoice.number
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
ALTER TABLE billing_invoiceline ENABLE ALWAYS TRIGGER billing_invoiceline_frozen;
CREATE TRIGGER billing_invoiceline_frozen_insert AFTER INSERT ON billing_invoiceline
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing_invoiceline_frozen_insert();
ALTER TABLE billing_invoiceline ENABLE ALWAYS TRIGGER billing_invoiceline_frozen_insert;
"""
REVERSE = """
DROP TRIGGER billing_invoiceline_frozen_insert ON billing_invoiceline;
DROP FUNCTION billing_invoiceline_frozen_insert();
DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE INSERT OR UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
ALTER TABLE billing_invoiceline ENABLE ALWAYS TRIGGER billing_invoiceline_frozen;
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_rollup_fee_requests")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
