-- Determinism and poison-proofing (docs/adr/0004-deterministic-terminal-tables.md).
--
-- Every prediction keeps what it was computed from and under which rules: the digest of its
-- canonical content (a reused tx_id with other content is refused, an identical one is a
-- replay), its feature vector (FEATURE_NAMES order), the rules version, and whether it was
-- late (behind its partition's watermark by more than the allowed lateness: scored, but not
-- counted in terminal activity).
ALTER TABLE fraud_predictions
    ADD COLUMN content_hash  bigint,
    ADD COLUMN features      double precision[],
    ADD COLUMN rules_version text,
    ADD COLUMN late          boolean NOT NULL DEFAULT false;

-- A partition's watermark: the newest event time at or before its next offset (or promised by
-- the first record waiting there). Terminal tables are sealed only when every partition's
-- watermark has passed the day's counting horizon.
ALTER TABLE stream_checkpoints ADD COLUMN watermark timestamptz;
ALTER TABLE feature_state ADD COLUMN watermark timestamptz;

-- When a label became usable by terminal features: its report time, or (a label arriving after
-- the table of its report day was sealed) just after the newest sealed day.
ALTER TABLE labels ADD COLUMN known_at timestamptz;
UPDATE labels SET known_at = reported_at;
ALTER TABLE labels ALTER COLUMN known_at SET NOT NULL;

-- Terminal tables, built once per UTC day and then fixed: every engine, restart and replay
-- scores a day's transactions with the same table.
CREATE TABLE terminal_tables (
    day               date PRIMARY KEY,
    features_version  text NOT NULL,
    frame             bytea NOT NULL,       -- Parquet: terminal_id + terminal_columns()
    terminals         integer NOT NULL,
    idle_partitions   integer[] NOT NULL DEFAULT '{}',  -- sealed while these had nothing to read
    built_by          text NOT NULL,
    built_at          timestamptz NOT NULL DEFAULT now()
);

-- One rule for every writer of labels (engines, the dashboard's verdicts): a label is known
-- from its report time, unless the table of a later day was already sealed without it.
CREATE FUNCTION fs_label_known_at() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    sealed timestamptz;
BEGIN
    SELECT max(day)::timestamp AT TIME ZONE 'UTC' INTO sealed FROM terminal_tables;
    NEW.known_at := CASE WHEN sealed IS NOT NULL AND NEW.reported_at <= sealed
                         THEN sealed + interval '1 microsecond' ELSE NEW.reported_at END;
    RETURN NEW;
END
$$;
CREATE TRIGGER labels_known_at BEFORE INSERT ON labels
    FOR EACH ROW EXECUTE FUNCTION fs_label_known_at();

-- Records the Spark engine has read (its checkpoint is past them, their card features
-- computed in its state store) but cannot score yet: their day's terminal table waits for
-- other partitions. They are scored, in log order, before anything newer of their partition.
CREATE TABLE deferred_rows (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    key             bytea,
    value           bytea NOT NULL,
    kafka_time_ms   bigint,
    card_features   double precision[] NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, "offset")
);

-- What the status shows besides dead letters: records scored late, and reused tx_ids refused.
ALTER TABLE engine_status
    ADD COLUMN late_total       bigint NOT NULL DEFAULT 0,
    ADD COLUMN duplicates_total bigint NOT NULL DEFAULT 0;

-- Nothing ever wrote this table: the model registry lives in model.dir (CURRENT + metadata).
DROP TABLE model_versions;
