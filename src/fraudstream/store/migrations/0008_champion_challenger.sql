-- Champion and challenger (docs/adr/0008-champion-challenger.md).
--
-- A challenger is scored in shadow by the engines on live traffic beside the champion: its
-- score and the decision its thresholds would have made are kept here, in the same
-- transaction as the champion's prediction, and never acted on.
CREATE TABLE shadow_predictions (
    tx_id          text NOT NULL,
    model_version  text NOT NULL,
    event_time     timestamptz NOT NULL,
    score          double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    decision       text NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, model_version)
);
CREATE INDEX shadow_predictions_time ON shadow_predictions (event_time);

-- Matured quality is measured for the shadow too, on the same days as the champion.
ALTER TABLE quality_daily ADD COLUMN role text NOT NULL DEFAULT 'champion'
    CHECK (role IN ('champion', 'shadow'));
ALTER TABLE quality_daily ADD COLUMN money_recall double precision;
ALTER TABLE quality_daily DROP CONSTRAINT quality_daily_pkey;
ALTER TABLE quality_daily ADD PRIMARY KEY (day, model_version, role);
ALTER TABLE quality_histogram ADD COLUMN role text NOT NULL DEFAULT 'champion'
    CHECK (role IN ('champion', 'shadow'));
ALTER TABLE quality_histogram DROP CONSTRAINT quality_histogram_pkey;
ALTER TABLE quality_histogram ADD PRIMARY KEY (day, model_version, role, bin);

-- Every change of champion or challenger, by whom and on what evidence: the model's audit.
CREATE TABLE model_events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL CHECK (action IN (
                    'challenger', 'promoted', 'kept', 'rolled_back', 'retired')),
    version     text NOT NULL,
    previous    text,                -- the champion replaced; for 'kept', the challenger judged
    actor       text NOT NULL,       -- a person's name, or 'gate' / 'rollback' / 'retrain'
    evidence    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX model_events_at ON model_events (at);
