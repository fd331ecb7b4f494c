-- The life of a sale after its close: it is archived, and Postgres answers
-- for it alone once its Redis keys are gone.

-- How long an admitted buyer may hold nothing before losing the turn
-- (seconds; the queue scripts read it from the sale's Redis meta as
-- `admit_idle_ms`), so the last tickets are not kept from the next buyers
-- for a whole pass lifetime.
ALTER TABLE sales ADD COLUMN admit_idle_seconds integer NOT NULL DEFAULT 60
    CHECK (admit_idle_seconds BETWEEN 5 AND 3600);

-- When the archiver removed the sale from Redis (NULL while it is live).
-- Set only once the sale has closed, its stream is in Postgres and its holds
-- are gone; from then on every read of the sale is answered from here.
ALTER TABLE sales ADD COLUMN archived_at timestamptz;
-- Buyers admitted from the queue over the sale's life, copied from Redis when
-- the sale is archived (its organizer's stats still show it).
ALTER TABLE sales ADD COLUMN admitted_total bigint NOT NULL DEFAULT 0
    CHECK (admitted_total >= 0);
ALTER TABLE sales ADD CONSTRAINT sales_archived_only_once_closed
    CHECK (archived_at IS NULL OR closes_at IS NOT NULL);

-- An organizer may end a sale at once, even one that has not opened yet: the
-- close then comes before `opens_at`. A closing time the organizer sets is
-- still checked to be after `opens_at` by the API; here it must at least
-- follow the sale's creation.
ALTER TABLE sales DROP CONSTRAINT sales_check;
ALTER TABLE sales ADD CONSTRAINT sales_closes_after_opening
    CHECK (closes_at IS NULL OR closes_at > opens_at OR closes_at >= created_at);

-- Listing sales newest first, all of them or one organizer's, by keyset
-- (created_at, id).
CREATE INDEX sales_newest ON sales (created_at DESC, id DESC);
CREATE INDEX sales_by_organizer ON sales (organizer_id, created_at DESC, id DESC);
-- The workers' Postgres side visits only live sales.
CREATE INDEX sales_live ON sales (created_at) WHERE archived_at IS NULL;
-- An organizer's attendee list: a sale's confirmed reservations.
CREATE INDEX reservations_confirmed_by_sale ON reservations (sale_id, confirmed_at, id)
    WHERE status = 'confirmed';
-- The archiver sweeps the sales it archived lately once more, for a key a
-- worker step already under way may have written after the wipe.
CREATE INDEX sales_archived ON sales (archived_at) WHERE archived_at IS NOT NULL;
