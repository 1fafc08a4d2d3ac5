-- chatd schema v9: the classifier's consumed offsets beside the fence
-- (docs/ARCHITECTURE.md, "Offsets"). next_offset is the next chat-send
-- offset of the partition whose records the owner holding `epoch` has
-- stored and produced; written by the store statement of a later batch,
-- only while that epoch holds. A new owner starts there (seek), so Kafka's
-- own offset commits can be rare: a commit pending on __consumer_offsets
-- holds the member's heartbeats until it replicates (RELIABILITY P2b, P2d).
-- NULL: never written (Kafka's committed offset is all there is).
ALTER TABLE partition_owners ADD COLUMN IF NOT EXISTS next_offset bigint;
