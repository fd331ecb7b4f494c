-- The record does not depend on the order in which sink replicas apply a
-- sale's stream entries, and it tells when Redis has gone back in time.
--
-- Each stream entry carries the sale's sequence number (`seq`, one more than
-- the entry before). A reservation row keeps the numbers of the entries that
-- made it: `confirm_seq` and `cancel_seq`. With them the reconciler can ask
-- Postgres what it held as of any point of the stream, exactly, whichever
-- sink applied what first.
--
-- A cancellation applied before its confirmation leaves a tombstone: a row
-- with status 'cancelled' (its confirmation's time comes with the
-- cancellation's entry). The late confirmation then fills in `confirm_seq`
-- and changes nothing else; `sold` moves only on real transitions.
ALTER TABLE reservations ADD COLUMN confirm_seq bigint CHECK (confirm_seq > 0);
ALTER TABLE reservations ADD COLUMN cancel_seq bigint CHECK (cancel_seq > 0);

-- A sequence number belongs to one entry of one sale. A Redis restarted from
-- an older file, or a lagging replica promoted, numbers its new entries from
-- where it was: the first one that reuses a number Postgres already holds is
-- refused here, and the sink freezes the sale.
CREATE UNIQUE INDEX reservations_confirm_seq ON reservations (sale_id, confirm_seq)
    WHERE confirm_seq IS NOT NULL;
CREATE UNIQUE INDEX reservations_cancel_seq ON reservations (sale_id, cancel_seq)
    WHERE cancel_seq IS NOT NULL;

-- The high-water mark: the highest stream sequence number applied for the
-- sale, written in the same transaction as the rows. A Redis whose own
-- sequence is below it has lost entries Postgres holds: the reconciler
-- freezes the sale (reason `rollback`) until `flashsale restore`.
ALTER TABLE sales ADD COLUMN applied_seq bigint NOT NULL DEFAULT 0 CHECK (applied_seq >= 0);
