"""The seal on finalised invoices, whole: no way round it short of the table owner's DDL.

0002 froze finalised invoices and their lines against UPDATE and DELETE; 0003 let INSERT
through, and the trigger looked only at a line's old invoice, so a line could be added to a
finalised invoice, or a draft's line moved into one. Here, with corrections as credit notes:

- Lines: no INSERT into a finalised invoice, no UPDATE when the old or the new invoice is
  finalised (but for `stripe_item_id` alone, the Stripe mirror), no DELETE from one. Drafts'
  lines stay writable: a close writes drafts and their lines, then finalises them; a credit
  note is a draft with lines, then finalised. The invoice's row is share-locked while a line
  is written, so a line and the invoice's finalising cannot pass each other.
- Invoices: as 0002, only `stripe_invoice_id`, `payment` and `paid_at` change once finalised,
  compared as whole rows so that a column added later is frozen too.
- The invoice-number counter (gap-free numbers): `last` only goes up, a prefix never changes,
  a row is never deleted.
- TRUNCATE of the invoices, lines, the counter and catalogue's price rows is refused while a
  finalised invoice exists (Django's test flush of drafts or empty tables still works).
- Every trigger fires ALWAYS, under `session_replication_role = replica` too. The owner's
  explicit `ALTER TABLE ... DISABLE TRIGGER` in a transaction is the maintenance path.

Errors are integrity_constraint_violation, so services and the admin can show them.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION billing_invoice_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'finalised' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE'
       OR to_jsonb(NEW) - '{stripe_invoice_id,payment,paid_at}'::text[]
          IS DISTINCT FROM to_jsonb(OLD) - '{stripe_invoice_id,payment,paid_at}'::text[] THEN
        RAISE EXCEPTION 'invoice % is finalised: correct it with a credit note', OLD.number
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
ALTER TABLE billing_invoice ENABLE ALWAYS TRIGGER billing_invoice_frozen;

CREATE OR REPLACE FUNCTION billing_invoiceline_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice billing_invoice;
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(NEW) - 'stripe_item_id' = to_jsonb(OLD) - 'stripe_item_id' THEN
        RETURN NEW;  -- the Stripe mirror, or nothing, changes
    END IF;
    -- FOR SHARE waits for an invoice being finalised and reads it as committed.
    FOR invoice IN
        SELECT * FROM billing_invoice
        WHERE id IN (CASE WHEN TG_OP <> 'INSERT' THEN OLD.invoice_id END,
                     CASE WHEN TG_OP <> 'DELETE' THEN NEW.invoice_id END)
        ORDER BY id FOR SHARE
    LOOP
        IF invoice.status = 'finalised' THEN
            RAISE EXCEPTION 'invoice % is finalised: its lines cannot change; '
                            'correct it with a credit note', invoice.number
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END LOOP;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE INSERT OR UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
ALTER TABLE billing_invoiceline ENABLE ALWAYS TRIGGER billing_invoiceline_frozen;

CREATE FUNCTION billing_invoicenumber_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoice number counter % cannot be deleted: numbers are gap-free',
                        OLD.prefix
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.prefix) IS DISTINCT FROM (OLD.id, OLD.prefix) OR NEW.last < OLD.last THEN
        RAISE EXCEPTION 'invoice number counter % only counts up: % is taken already',
                        OLD.prefix, OLD.last
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_invoicenumber_forward BEFORE UPDATE OR DELETE ON billing_invoicenumber
    FOR EACH ROW EXECUTE FUNCTION billing_invoicenumber_forward();
ALTER TABLE billing_invoicenumber ENABLE ALWAYS TRIGGER billing_invoicenumber_forward;

CREATE FUNCTION billing_truncate_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM billing_invoice WHERE status = 'finalised') THEN
        RAISE EXCEPTION 'cannot truncate %: finalised invoices exist', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
"""

TABLES = (
    "billing_invoice",
    "billing_invoiceline",
    "billing_invoicenumber",
    "catalogue_price",
    "catalogue_planprice",
)

TRUNCATE = "".join(
    f"""
CREATE TRIGGER {table}_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION billing_truncate_sealed();
ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_truncate;
"""
    for table in TABLES
)

REVERSE = (
    "".join(f"DROP TRIGGER {table}_truncate ON {table};\n" for table in TABLES)
    + """
DROP FUNCTION billing_truncate_sealed();
DROP TRIGGER billing_invoicenumber_forward ON billing_invoicenumber;
DROP FUNCTION billing_invoicenumber_forward();

DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
CREATE TRIGGER billing_invoiceline_frozen BEFORE UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
CREATE OR REPLACE FUNCTION billing_invoiceline_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    line billing_invoiceline := CASE WHEN TG_OP = 'INSERT' THEN NEW ELSE OLD END;
BEGIN
    IF EXISTS (SELECT FROM billing_invoice
               WHERE id = line.invoice_id AND status = 'finalised')
       AND (TG_OP <> 'UPDATE'
            OR (NEW.invoice_id, NEW.item, NEW.tier, NEW.model, NEW.price_book_id, NEW.quantity,
                NEW.unit_price, NEW.amount, NEW.amount_minor, NEW.usage_from, NEW.usage_to)
               IS DISTINCT FROM
               (OLD.invoice_id, OLD.item, OLD.tier, OLD.model, OLD.price_book_id, OLD.quantity,
                OLD.unit_price, OLD.amount, OLD.amount_minor, OLD.usage_from, OLD.usage_to)) THEN
        RAISE EXCEPTION 'the lines of a finalised invoice cannot change'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

ALTER TABLE billing_invoice ENABLE TRIGGER billing_invoice_frozen;
CREATE OR REPLACE FUNCTION billing_invoice_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'finalised' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE'
       OR (NEW.account_id, NEW.kind, NEW.corrects_id, NEW.number, NEW.status, NEW.period_start,
           NEW.period_end, NEW.currency, NEW.amount, NEW.total_minor, NEW.created_at,
           NEW.finalised_at, NEW.memo)
          IS DISTINCT FROM
          (OLD.account_id, OLD.kind, OLD.corrects_id, OLD.number, OLD.status, OLD.period_start,
           OLD.period_end, OLD.currency, OLD.amount, OLD.total_minor, OLD.created_at,
           OLD.finalised_at, OLD.memo) THEN
        RAISE EXCEPTION 'invoice % is finalised: correct it with a credit note', OLD.number
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
"""
)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_prices_budgets_moved"),
        ("catalogue", "0003_seal"),
    ]

    operations = [migrations.RunSQL(FORWARD + TRUNCATE, REVERSE)]
