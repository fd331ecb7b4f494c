-- Tickets of each zone confirmed in Postgres, kept by the stream sink in the
-- same transaction as the reservation rows. The CHECK is the last line of
-- defence: whatever happens upstream, Postgres never records a zone sold
-- beyond its capacity (the sink dead-letters the entry that would).
ALTER TABLE zones ADD COLUMN sold integer NOT NULL DEFAULT 0
    CHECK (sold >= 0 AND sold <= capacity);
