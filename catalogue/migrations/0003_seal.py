"""A price book in force is sealed in the database too, not only in catalogue.services.

Rating prices usage by the book in force when it started, so a book in force, its prices and
its plans never change: a change of prices is a new book. A book is *in force* once its
`effective_from` is at or before the moment of the write (clock_timestamp()), and *sealed*
once it is in force and was not written by the current transaction. So a book is composed
atomically, rows and all, in the transaction that creates it (backdated or not), and sealed
when that transaction commits. Then:

- its `catalogue_price` and `catalogue_planprice` rows cannot be inserted, updated (into or out
  of it) or deleted;
- the book itself cannot be updated or deleted: not only its `effective_from` and currency
  but any column, since an UPDATE would make its row the updating transaction's own again;
- a book not in force can only move to a later start (as catalogue.services allows), never
  into force by an UPDATE.

"Written by the current transaction" is the book row's `xmin`: a row is visible to a
transaction only once its writer committed, or if the writer is that very transaction (or one
of its subtransactions: Django's nested atomic blocks are savepoints), so a visible row whose
writer is still in progress is this transaction's own. Nothing can set `xmin`, so the rule
cannot be talked round.

The triggers fire ALWAYS, under `session_replication_role = replica` too. The table owner can
still `ALTER TABLE ... DISABLE TRIGGER` inside a transaction: that explicit DDL is the
maintenance path (billing/seal.py). TRUNCATE of the price tables is refused while a
finalised invoice exists (billing/migrations/0006_seal.py: billing knows what was billed).
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION catalogue_written_here(writer xid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    here bigint := pg_current_xact_id()::text::bigint;
    -- xmin has 32 bits. This transaction's id and its subtransactions' are at or after its
    -- top-level id, so the writer is placed at the first id >= `here` with the same 32 bits.
    ahead bigint := ((writer::text::bigint - here) % 4294967296 + 4294967296) % 4294967296;
BEGIN
    IF ahead >= 2147483648 THEN
        RETURN false;  -- before this transaction began
    END IF;
    RETURN coalesce(pg_xact_status((here + ahead)::text::xid8) = 'in progress', false);
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;  -- a frozen row whose 32 bits fall ahead of every id yet assigned
END $$;

CREATE FUNCTION catalogue_book_sealed(book_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(bool_or(effective_from <= clock_timestamp()
                            AND NOT catalogue_written_here(xmin)), false)
    FROM catalogue_pricebook WHERE id = book_id
$$;

CREATE FUNCTION catalogue_pricebook_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF catalogue_book_sealed(OLD.id) THEN
        RAISE EXCEPTION 'price book % is in force since % and cannot change: '
                        'a change of prices is a new book', OLD.id, OLD.effective_from
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.effective_from IS DISTINCT FROM OLD.effective_from
       AND NEW.effective_from <= clock_timestamp()
       AND NOT catalogue_written_here((SELECT xmin FROM catalogue_pricebook WHERE id = OLD.id))
    THEN
        RAISE EXCEPTION 'price book % is not in force yet: it can only move to a later start',
                        OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER catalogue_pricebook_sealed BEFORE UPDATE OR DELETE ON catalogue_pricebook
    FOR EACH ROW EXECUTE FUNCTION catalogue_pricebook_sealed();
ALTER TABLE catalogue_pricebook ENABLE ALWAYS TRIGGER catalogue_pricebook_sealed;

CREATE FUNCTION catalogue_book_row_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    book bigint;
BEGIN
    FOREACH book IN ARRAY ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.price_book_id END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.price_book_id END
    ] LOOP
        IF catalogue_book_sealed(book) THEN
            RAISE EXCEPTION 'price book % is in force and cannot change: '
                            'a change of prices is a new book', book
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END LOOP;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER catalogue_price_sealed BEFORE INSERT OR UPDATE OR DELETE ON catalogue_price
    FOR EACH ROW EXECUTE FUNCTION catalogue_book_row_sealed();
ALTER TABLE catalogue_price ENABLE ALWAYS TRIGGER catalogue_price_sealed;

CREATE TRIGGER catalogue_planprice_sealed BEFORE INSERT OR UPDATE OR DELETE
    ON catalogue_planprice FOR EACH ROW EXECUTE FUNCTION catalogue_book_row_sealed();
ALTER TABLE catalogue_planprice ENABLE ALWAYS TRIGGER catalogue_planprice_sealed;
"""

REVERSE = """
DROP TRIGGER catalogue_planprice_sealed ON catalogue_planprice;
DROP TRIGGER catalogue_price_sealed ON catalogue_price;
DROP FUNCTION catalogue_book_row_sealed();
DROP TRIGGER catalogue_pricebook_sealed ON catalogue_pricebook;
DROP FUNCTION catalogue_pricebook_sealed();
DROP FUNCTION catalogue_book_sealed(bigint);
DROP FUNCTION catalogue_written_here(xid);
"""


class Migration(migrations.Migration):
    dependencies = [("catalogue", "0002_price_in_force")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
