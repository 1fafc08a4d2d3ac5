-- chatd schema v4: room options and bans for the server API (docs/API.md).
-- Applied in place: the new columns have defaults, so every existing room
-- stays what it was (open, no display name, no owner).
--   private:  only members may join; members are added by the server API or
--             by the room's owner (docs/PROTOCOL.md, "Private rooms").
--   archived: the room takes no joins and no messages; history stays.
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS private boolean NOT NULL DEFAULT false;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS name text;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS archived boolean NOT NULL DEFAULT false;

-- A ban refuses the user's tokens on every gateway until `until` (unix
-- seconds); an expired row is ignored (and replaced by the next ban).
CREATE TABLE IF NOT EXISTS bans (
    user_id text PRIMARY KEY,
    until   bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
