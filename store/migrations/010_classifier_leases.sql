-- chatd schema v10 (issue 18): classifiers' leases, for --ownership=lease
-- (docs/ARCHITECTURE.md, "Failover"; roles/ownership.h). Each classifier
-- renews its row every beat (expires_at = the server's now() + the lease:
-- no local clock is compared with another's) and lists the chat-send
-- partitions it holds, so a new owner takes one only once nobody live holds
-- it; a clean stop deletes the row. The lease only schedules: the fence
-- epoch in partition_owners still decides who may store.
CREATE TABLE IF NOT EXISTS classifier_members (
    topic      text        NOT NULL,
    member     text        NOT NULL,
    held       int[]       NOT NULL DEFAULT '{}',
    draining   boolean     NOT NULL DEFAULT false,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (topic, member)
);
