-- The analysts' workbench (docs/workbench.md): named users with roles, an append-only audit
-- log of every action, and cases that group a card's alerts.

-- Named users. Passwords are argon2id hashes (argon2-cffi); a user is disabled, never
-- deleted, so that every audit line keeps naming someone who existed.
CREATE TABLE app_users (
    username        text PRIMARY KEY CHECK (username ~ '^[a-z][a-z0-9_.-]{1,39}$'),
    role            text NOT NULL CHECK (role IN ('analyst', 'supervisor', 'admin')),
    password_hash   text NOT NULL CHECK (password_hash LIKE '$argon2%'),
    created_at      timestamptz NOT NULL,
    created_by      text NOT NULL,
    disabled_at     timestamptz
);

-- Every action of a person (or of the system on a person's behalf): verdicts, case changes,
-- rule and list changes, model promotions, user changes. Append-only: no role may change or
-- remove a line, the owner included (the trigger), and the services are granted INSERT only.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    object_type  text NOT NULL,
    object_id    text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id);

CREATE FUNCTION fs_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION fs_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION fs_audit_append_only();

-- Cases: a card's alerts (review and decline decisions) worked together. The engine opens a
-- case, or adds to the card's open one, in the transaction that stores the alert
-- (store/projections.py: Cases), so a replayed batch adds nothing twice.
CREATE TABLE cases (
    case_id        bigserial PRIMARY KEY,
    card_id        text NOT NULL,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN (
                       'open', 'investigating', 'escalated',
                       'resolved_fraud', 'resolved_legitimate')),
    priority       smallint NOT NULL CHECK (priority BETWEEN 1 AND 3),  -- 1 is the most urgent
    assignee       text REFERENCES app_users (username),
    opened_at      timestamptz NOT NULL,
    last_alert_at  timestamptz NOT NULL,
    alert_count    integer NOT NULL,
    max_score      double precision NOT NULL,
    total_amount   numeric(16, 2) NOT NULL,
    updated_at     timestamptz NOT NULL,
    resolved_at    timestamptz,
    resolved_by    text,
    CHECK ((status LIKE 'resolved%') = (resolved_at IS NOT NULL))
);
-- At most one unresolved case per card: a new alert joins it.
CREATE UNIQUE INDEX cases_one_open_per_card ON cases (card_id)
    WHERE status IN ('open', 'investigating', 'escalated');
CREATE INDEX cases_unresolved ON cases (priority, opened_at)
    WHERE status IN ('open', 'investigating', 'escalated');
CREATE INDEX cases_card ON cases (card_id, opened_at);

CREATE TABLE case_alerts (
    tx_id    text PRIMARY KEY,
    case_id  bigint NOT NULL REFERENCES cases (case_id)
);
CREATE INDEX case_alerts_case ON case_alerts (case_id);

CREATE TABLE case_notes (
    id        bigserial PRIMARY KEY,
    case_id   bigint NOT NULL REFERENCES cases (case_id),
    at        timestamptz NOT NULL,
    author    text NOT NULL,
    note      text NOT NULL CHECK (length(note) BETWEEN 1 AND 4000)
);
CREATE INDEX case_notes_case ON case_notes (case_id, at);

-- A case's urgency from one alert (a case takes its most urgent alert's): 1 for a decline,
-- a score of 0.9 or more, or 1,000 or more; 2 for a score of 0.7 or more, or 250 or more.
CREATE FUNCTION fs_case_priority(decision text, score double precision, amount numeric)
RETURNS smallint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN decision = 'decline' OR score >= 0.9 OR amount >= 1000 THEN 1
                WHEN score >= 0.7 OR amount >= 250 THEN 2
                ELSE 3 END::smallint
$$;

-- The alerts stored before cases existed and never decided become cases too, one per card.
WITH pending AS (
    SELECT p.tx_id, p.card_id, p.score, p.amount, p.decision, p.stored_at
    FROM fraud_predictions p
    WHERE p.decision IN ('review', 'decline')
      AND NOT EXISTS (SELECT 1 FROM review_decisions r WHERE r.tx_id = p.tx_id)
), opened AS (
    INSERT INTO cases (card_id, priority, opened_at, last_alert_at, alert_count, max_score,
                       total_amount, updated_at)
    SELECT card_id,
           min(fs_case_priority(decision, score, amount)),
           min(stored_at), max(stored_at), count(*), max(score), sum(amount), max(stored_at)
    FROM pending GROUP BY card_id
    RETURNING case_id, card_id
)
INSERT INTO case_alerts (tx_id, case_id)
SELECT pending.tx_id, opened.case_id FROM pending JOIN opened USING (card_id);
