"""The lines trigger guards UPDATE and DELETE only, as designed: what was billed cannot change.

0002 refused INSERTs too, which broke fixtures that finalise an invoice before writing its
lines; billing's services only ever add lines to drafts.
"""

from django.db import migrations

FORWARD = """
DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
"""

REVERSE = """
DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE INSERT OR UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_invoice_immutable")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
