-- How many more buyers than tickets available the releaser may admit, as a
-- percent of the tickets available: buyers admitted and yet to hold never
-- outnumber the available tickets plus this percent of them (the queue
-- scripts read it from the sale's Redis meta as `admit_headroom_percent`).
--
-- At the end of a sale, buyers who are admitted and walk away keep tickets
-- from the next buyers until their turn (`admit_idle_seconds`, default 60)
-- runs out. Measured with examples/tail.rs (40 tickets left, 400 buyers
-- waiting, the first 40 admitted walk away): with 0% the last tickets sold
-- after 61 s, with 100% in 0.28 s (with 10 of 40 walking away, 50% is
-- enough: 0.02 s). The cost: near the very end, up to this percent more
-- buyers than tickets left are admitted; those who find nothing to hold get
-- `409 sold_out`, and tickets that come back go to them first while their
-- turn lasts.
ALTER TABLE sales ADD COLUMN admit_headroom_percent integer NOT NULL DEFAULT 100
    CHECK (admit_headroom_percent BETWEEN 0 AND 1000);
