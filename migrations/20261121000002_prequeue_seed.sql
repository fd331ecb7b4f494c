-- The secret seed that orders a sale's pre-queue (buyers who join before
-- opening). Its SHA-256 is public from creation, the seed itself from
-- opening, so anyone can check the pre-queue order was fixed in advance.
ALTER TABLE sales ADD COLUMN prequeue_seed text NOT NULL DEFAULT '';
ALTER TABLE sales ALTER COLUMN prequeue_seed DROP DEFAULT;
