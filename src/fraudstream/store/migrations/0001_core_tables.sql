-- Predictions, labels, analyst reviews, model versions, stream checkpoints and rollups.

CREATE TABLE fraud_predictions (
    tx_id            text PRIMARY KEY,
    event_time       timestamptz NOT NULL,
    card_id          text NOT NULL,          -- a token, never a card number
    terminal_id      text NOT NULL,
    amount           numeric(14, 2) NOT NULL CHECK (amount >= 0),
    score            double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    decision         text NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    rule_hits        text[] NOT NULL DEFAULT '{}',
    reasons          jsonb NOT NULL DEFAULT '[]',
    model_version    text NOT NULL,
    engine           text NOT NULL,
    kafka_partition  integer,
    kafka_offset     bigint,
    kafka_time       timestamptz,             -- broker append time
    scored_at        timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Append-mostly and time-ordered: BRIN keeps time-range scans cheap at a tiny size.
CREATE INDEX fraud_predictions_event_time_brin ON fraud_predictions USING brin (event_time);
CREATE INDEX fraud_predictions_stored_at_brin ON fraud_predictions USING brin (stored_at);
CREATE INDEX fraud_predictions_card ON fraud_predictions (card_id, event_time DESC);
CREATE INDEX fraud_predictions_terminal ON fraud_predictions (terminal_id, event_time DESC);
CREATE INDEX fraud_predictions_review_queue ON fraud_predictions (score DESC)
    WHERE decision = 'review';

-- Outcomes that arrive days later (chargebacks, analyst verdicts, dataset labels).
CREATE TABLE labels (
    tx_id        text NOT NULL,
    source       text NOT NULL,
    is_fraud     boolean NOT NULL,
    reported_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, source)
);
CREATE INDEX labels_reported_at_brin ON labels USING brin (reported_at);

CREATE TABLE review_decisions (
    id          bigserial PRIMARY KEY,
    tx_id       text NOT NULL,
    verdict     text NOT NULL CHECK (verdict IN ('fraud', 'legitimate')),
    analyst     text NOT NULL,
    comment     text,
    decided_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX review_decisions_tx ON review_decisions (tx_id);

CREATE TABLE model_versions (
    version      text PRIMARY KEY,
    created_at   timestamptz NOT NULL,
    promoted_at  timestamptz,
    metadata     jsonb NOT NULL
);

-- Consumed offsets, written in the same transaction as the predictions they produced.
CREATE TABLE stream_checkpoints (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL CHECK (partition >= 0),
    next_offset     bigint NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Per-minute rollups so that the dashboard never scans the predictions table.
CREATE TABLE rollup_minute (
    minute           timestamptz NOT NULL,
    engine           text NOT NULL,
    tx_count         bigint NOT NULL DEFAULT 0,
    amount_sum       numeric(18, 2) NOT NULL DEFAULT 0,
    approve_count    bigint NOT NULL DEFAULT 0,
    review_count     bigint NOT NULL DEFAULT 0,
    decline_count    bigint NOT NULL DEFAULT 0,
    amount_review    numeric(18, 2) NOT NULL DEFAULT 0,
    amount_decline   numeric(18, 2) NOT NULL DEFAULT 0,
    latency_ms_hist  bigint[] NOT NULL DEFAULT '{}',  -- counts per fixed bucket: mergeable
    PRIMARY KEY (minute, engine)
);

-- Model quality per day over matured labels.
CREATE TABLE quality_daily (
    day                  date NOT NULL,
    model_version        text NOT NULL,
    transactions         bigint NOT NULL,
    frauds               bigint NOT NULL,
    auc_roc              double precision,
    average_precision    double precision,
    card_precision_at_k  double precision,
    k                    integer NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, model_version)
);
