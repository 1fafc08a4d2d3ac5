-- chatd schema v2: fencing of classifiers (docs/ARCHITECTURE.md, "Fencing").
-- A classifier assigned a chat-send partition takes the partition's next
-- epoch here before it stores anything of it, and every batch it stores
-- proves, in the same statement and under a share lock of these rows, that
-- it still holds that epoch. A classifier that lost the partition (a zombie:
-- stuck past its session, still reaching PostgreSQL) is refused from the
-- moment the new owner has taken the epoch; the new owner's reads come after
-- its take, so they see everything the old owner stored.
CREATE TABLE IF NOT EXISTS partition_owners (
    topic     text   NOT NULL,
    partition int    NOT NULL,
    epoch     bigint NOT NULL,
    owner     text   NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
