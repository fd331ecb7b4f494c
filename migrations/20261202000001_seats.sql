-- Reserved seating. A seated zone keeps its layout (rows front to back,
-- seats per row: {"rows": [{"row": "A", "seats": 20}]}); NULL is general
-- admission. Its capacity is its number of seats.
ALTER TABLE zones ADD COLUMN seating jsonb;

-- One row per seat of a confirmed (and later cancelled) reservation of a
-- seated zone, written by the sink with the reservation, in one transaction.
CREATE TABLE reservation_seats (
    reservation_id text NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
    sale_id        uuid NOT NULL,
    zone_code      text NOT NULL,
    seat           text NOT NULL CHECK (seat ~ '^[A-Za-z0-9]{1,4}-[1-9][0-9]{0,3}$'),
    -- The reservation's status, kept here so that the index below can say
    -- "among confirmed reservations".
    status         text NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    PRIMARY KEY (reservation_id, seat),
    FOREIGN KEY (sale_id, zone_code) REFERENCES zones (sale_id, code)
);

-- No seat is ever sold twice, even by a bug upstream: the sink's insert
-- fails and the entry goes to the dead letters.
CREATE UNIQUE INDEX reservation_seats_sold_once
    ON reservation_seats (sale_id, zone_code, seat) WHERE status = 'confirmed';
