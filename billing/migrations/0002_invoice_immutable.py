"""A finalised invoice and its lines are immutable in the database too, not only in services.

Corrections are credit notes. What may still change after finalising is the Stripe mirror:
an invoice's stripe_invoice_id, payment and paid_at, and a line's stripe_item_id.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_invoice_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER billing_invoice_frozen BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_frozen();

CREATE FUNCTION billing_invoiceline_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER billing_invoiceline_frozen BEFORE INSERT OR UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_frozen();
"""

REVERSE = """
DROP TRIGGER billing_invoiceline_frozen ON billing_invoiceline;
DROP FUNCTION billing_invoiceline_frozen();
DROP TRIGGER billing_invoice_frozen ON billing_invoice;
DROP FUNCTION billing_invoice_frozen();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
