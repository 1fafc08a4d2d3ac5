-- chatd schema v5: edits and deletes of messages (docs/PROTOCOL.md,
-- extension 3). An edit or delete is a row of its own in messages, with the
-- seq it took (kind 'e' or 'd', target = the message's id), and is applied
-- to its target row in the statement that stores it:
--   edited:  the seq of the edit whose text body now holds (NULL: never);
--   deleted: the message was deleted; its body and the bodies of its edits
--            are '' from then on (the text is gone, not hidden).
-- Applied in place: constant defaults are catalog-only (no table rewrite),
-- so every existing row is an unedited message. The index is built over the
-- existing rows once (all NULL, so it stays small).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'm';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS target text;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS edited bigint;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false;
-- A delete finds the edits of its target to erase their text.
CREATE INDEX IF NOT EXISTS messages_room_target ON messages (room, target) WHERE target IS NOT NULL;
