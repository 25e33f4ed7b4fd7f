-- What the streaming engines need besides predictions: mergeable latency histograms, daily
-- terminal activity for the terminal-risk tables, feature-state snapshots, engine status and
-- the dead-letter counts.

-- Element-wise sum of two histograms (missing buckets count as zero).
CREATE FUNCTION fs_histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i), '{}')
    FROM generate_series(1, greatest(coalesce(array_length(a, 1), 0),
                                     coalesce(array_length(b, 1), 0))) AS i
$$;

-- Transactions per terminal per UTC day (the denominators of terminal risk).
CREATE TABLE terminal_daily (
    terminal_id  text NOT NULL,
    day          date NOT NULL,
    tx_count     bigint NOT NULL,
    PRIMARY KEY (terminal_id, day)
);

-- A partition's card state as of an offset, written in the same transaction as that offset.
CREATE TABLE feature_state (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    next_offset     bigint NOT NULL,
    snapshot        bytea NOT NULL,
    features_version text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE engine_status (
    engine_id        text PRIMARY KEY,
    engine           text NOT NULL,
    consumer_group   text NOT NULL,
    model_version    text,
    partitions       integer[] NOT NULL DEFAULT '{}',
    throughput_tps   double precision,
    lag              bigint,
    batch_ms_p50     double precision,
    batch_ms_p99     double precision,
    dlq_total        bigint NOT NULL DEFAULT 0,
    started_at       timestamptz NOT NULL,
    heartbeat_at     timestamptz NOT NULL
);

-- Rejected messages (the bytes stay on the dead-letter topic; this is for the dashboard).
CREATE TABLE dlq_events (
    id               bigserial PRIMARY KEY,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    reason           text NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX dlq_events_received_brin ON dlq_events USING brin (received_at);
