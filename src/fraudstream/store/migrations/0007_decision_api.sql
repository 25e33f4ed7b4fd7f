-- The decision API (docs/adr/0007-decisions-through-the-owner.md, docs/api.md).
--
-- API keys are stored as the SHA-256 of the key: the key itself is shown once, at creation.
-- Keys are 256-bit random tokens, so a fast hash is safe here (no dictionary to attack) and
-- keeps every request's check to one lookup; revocation sets revoked_at, never deletes, so
-- that the audit of who asked what stays readable.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    prefix      text NOT NULL,              -- the key's first characters, to recognise it
    key_sha256  bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- What the API answered when the owning engine could not decide within the budget. The
-- transaction still entered the stream and has its full decision in fraud_predictions; this
-- keeps the fallback the payment actually got, and why.
CREATE TABLE degraded_decisions (
    tx_id          text PRIMARY KEY,
    card_id        text NOT NULL,
    amount         numeric(14, 2) NOT NULL,
    decision       text NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    rule_hits      text[] NOT NULL DEFAULT '{}',
    reason         text NOT NULL,
    stale          text[] NOT NULL DEFAULT '{}',
    missing        text[] NOT NULL DEFAULT '{}',
    rules_version  text NOT NULL,
    api_key        text,
    answered_at    timestamptz NOT NULL,
    decision_ms    double precision NOT NULL
);
CREATE INDEX degraded_decisions_answered_at_brin ON degraded_decisions USING brin (answered_at);
