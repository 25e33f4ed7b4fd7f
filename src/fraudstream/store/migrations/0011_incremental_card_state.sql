-- Incremental card-state checkpoints (ADR 0011, engines/card_store.py): each checkpoint
-- stores the rows appended to card histories since the one before, not every card. A
-- partition's state is the base snapshot (if any, from before this migration or written
-- whole) with every checkpoint's changes replayed over it in sequence order.
ALTER TABLE feature_state ALTER COLUMN snapshot DROP NOT NULL;
ALTER TABLE feature_state ADD COLUMN changes_through bigint NOT NULL DEFAULT 0;

CREATE TABLE card_changes (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    sequence        bigint NOT NULL,
    newest          timestamptz,          -- the latest (card-adjusted) event time in rows
    rows            bytea NOT NULL,       -- features.card.CardChanges.to_bytes()
    PRIMARY KEY (consumer_group, topic, partition, sequence)
);
-- Written once, read only to rebuild: not worth PostgreSQL's compression on every write.
ALTER TABLE card_changes ALTER COLUMN rows SET STORAGE EXTERNAL;
