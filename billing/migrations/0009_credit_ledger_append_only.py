"""The credit ledger is append-only in the database, not only in the services.

billing_creditentry: no DELETE, and no UPDATE but `applied_at` going from null to a time once
(billing confirmed the entry in the gateway's Redis counter), compared as whole rows so that a
column added later is frozen too. billing_creditgrant: no DELETE, and nothing of a grant
changes once made (what is left of it is its entries' sum). The triggers fire ALWAYS, like
the invoices' seal (0006), so `session_replication_role = replica` does not lift them; the
errors are integrity_constraint_violation. TRUNCATE (the tests' flush) fires no row trigger.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_creditentry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.applied_at IS NULL
       AND to_jsonb(NEW) - 'applied_at' = to_jsonb(OLD) - 'applied_at' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'credit ledger entry % cannot be changed or deleted: the ledger is '
                    'append-only; record a correction instead', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER billing_creditentry_append_only BEFORE UPDATE OR DELETE
    ON billing_creditentry FOR EACH ROW EXECUTE FUNCTION billing_creditentry_append_only();
ALTER TABLE billing_creditentry ENABLE ALWAYS TRIGGER billing_creditentry_append_only;

CREATE FUNCTION billing_creditgrant_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit grant % cannot be changed or deleted: record a correction, a '
                    'refund or a new grant instead', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER billing_creditgrant_fixed BEFORE UPDATE OR DELETE
    ON billing_creditgrant FOR EACH ROW EXECUTE FUNCTION billing_creditgrant_fixed();
ALTER TABLE billing_creditgrant ENABLE ALWAYS TRIGGER billing_creditgrant_fixed;
"""

REVERSE = """
DROP TRIGGER billing_creditgrant_fixed ON billing_creditgrant;
DROP FUNCTION billing_creditgrant_fixed();
DROP TRIGGER billing_creditentry_append_only ON billing_creditentry;
DROP FUNCTION billing_creditentry_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0008_credits")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
