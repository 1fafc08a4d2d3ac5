-- chatd schema v1. PostgreSQL is the source of truth for users, rooms,
-- memberships, read marks and message history. Keyed by room, ready for
-- partitioning by room.
CREATE TABLE IF NOT EXISTS users (
    user_id    text PRIMARY KEY,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS rooms (
    room       text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS members (
    room      text NOT NULL REFERENCES rooms (room),
    user_id   text NOT NULL,
    read_seq  bigint NOT NULL DEFAULT 0,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id);

-- One row per sequenced message. (room, seq) is the identity; id is the
-- gateway-assigned message id (derived from (room, user, cid) when a cid is
-- given), so a re-consumed Kafka record can never be stored twice.
CREATE TABLE IF NOT EXISTS messages (
    room    text   NOT NULL,
    seq     bigint NOT NULL,
    id      text   NOT NULL,
    user_id text   NOT NULL,
    cid     text,
    body    text   NOT NULL,
    ts      bigint NOT NULL,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_room_user_cid ON messages (room, user_id, cid)
    WHERE cid IS NOT NULL;
