-- Accounts. Buyers register themselves; organizers are created from the
-- command line. The access token's `sub` is the user's id.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- As the user typed it; uniqueness ignores case (the index below).
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    -- argon2id, PHC string format (algorithm, parameters and salt included).
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('buyer', 'organizer')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));
