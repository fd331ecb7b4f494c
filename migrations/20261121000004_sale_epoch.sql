-- Each sale's epoch: its Redis copy carries the same number. A Redis that
-- comes back without the sale, or with another epoch (a replica from before
-- a restore), is detected, and the sale refuses holds until `flashsale
-- restore` rebuilds it from here under the next epoch.
ALTER TABLE sales ADD COLUMN epoch integer NOT NULL DEFAULT 1 CHECK (epoch > 0);
