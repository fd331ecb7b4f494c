-- Sales and their zones. Postgres is the source of truth for a sale's
-- definition; Redis holds a live copy with the stock counters.

CREATE TABLE sales (
    id                  uuid        PRIMARY KEY,
    -- The access token `sub` of the organizer who created the sale: only they
    -- may change it or read its figures.
    organizer_id        text        NOT NULL CHECK (length(organizer_id) BETWEEN 1 AND 128),
    name                text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    opens_at            timestamptz NOT NULL,
    -- Optional end of the sale: holds are refused from then on.
    closes_at           timestamptz CHECK (closes_at IS NULL OR closes_at > opens_at),
    release_rate        integer     NOT NULL CHECK (release_rate > 0),
    release_interval_ms integer     NOT NULL CHECK (release_interval_ms > 0),
    -- NULL: no cap on buyers admitted and not yet finished.
    max_active          integer     CHECK (max_active IS NULL OR max_active > 0),
    pass_ttl_seconds    integer     NOT NULL CHECK (pass_ttl_seconds > 0),
    hold_ttl_seconds    integer     NOT NULL CHECK (hold_ttl_seconds > 0),
    per_user_limit      integer     NOT NULL CHECK (per_user_limit > 0),
    paused              boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE zones (
    sale_id     uuid    NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    code        text    NOT NULL CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name        text    NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    capacity    integer NOT NULL CHECK (capacity > 0),
    price_cents bigint  NOT NULL CHECK (price_cents >= 0),
    -- Order in which the organizer listed the zones, for display.
    position    integer NOT NULL,
    PRIMARY KEY (sale_id, code)
);

-- Every organizer change to a sale's live settings: who, when, before, after.
CREATE TABLE sale_changes (
    id         bigserial   PRIMARY KEY,
    sale_id    uuid        NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    actor      text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    before     jsonb       NOT NULL,
    after      jsonb       NOT NULL
);
CREATE INDEX sale_changes_by_sale ON sale_changes (sale_id, changed_at);

-- Confirmed (and later cancelled) reservations, fed from each sale's Redis
-- stream. Outside auditors read this table directly.
CREATE TABLE reservations (
    -- The id the API gave the buyer; unique, so a replayed stream entry can
    -- never count twice.
    id           text        PRIMARY KEY,
    sale_id      uuid        NOT NULL,
    zone_code    text        NOT NULL,
    user_id      text        NOT NULL,
    quantity     integer     NOT NULL CHECK (quantity > 0),
    status       text        NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    confirmed_at timestamptz NOT NULL,
    cancelled_at timestamptz,
    payment_ref  text,
    FOREIGN KEY (sale_id, zone_code) REFERENCES zones (sale_id, code)
);
CREATE INDEX reservations_by_sale_zone ON reservations (sale_id, zone_code) WHERE status = 'confirmed';
CREATE INDEX reservations_by_user ON reservations (user_id);
