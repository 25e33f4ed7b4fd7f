-- Rules analysts own, and live lists (docs/workbench.md, store/rulebook.py, store/lists.py).

-- Each change of the rule set is a new version: drafted by one person, approved by another
-- with the supervisor role, then published. Versions are never changed after approval nor
-- deleted; rolling back publishes an earlier version again.
CREATE TABLE rule_versions (
    version      serial PRIMARY KEY,
    rules        jsonb NOT NULL,          -- [{name, action, when | terminals | cards, enabled}]
    note         text NOT NULL DEFAULT '',
    drafted_by   text NOT NULL,
    drafted_at   timestamptz NOT NULL,
    approved_by  text,
    approved_at  timestamptz,
    CHECK (approved_by IS NULL OR approved_by <> drafted_by),  -- four eyes
    CHECK ((approved_by IS NULL) = (approved_at IS NULL))
);

-- What runs: the newest 'live' publication decides; the newest 'shadow' one (if its version
-- is not null) is evaluated beside it and stored, never acted on.
CREATE TABLE rule_publications (
    id            bigserial PRIMARY KEY,
    target        text NOT NULL CHECK (target IN ('live', 'shadow')),
    version       integer REFERENCES rule_versions (version),
    published_by  text NOT NULL,
    published_at  timestamptz NOT NULL,
    CHECK (target = 'shadow' OR version IS NOT NULL)
);
CREATE INDEX rule_publications_target ON rule_publications (target, id DESC);

-- Allow and block lists of cards and terminals, read by rules by name
-- (`terminal_id in blocked_terminals`). An entry is removed, never deleted, and may expire.
CREATE TABLE list_entries (
    id          bigserial PRIMARY KEY,
    list_name   text NOT NULL CHECK (list_name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value       text NOT NULL CHECK (length(value) BETWEEN 1 AND 128),
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL,
    expires_at  timestamptz,
    removed_by  text,
    removed_at  timestamptz
);
CREATE UNIQUE INDEX list_entries_present ON list_entries (list_name, value)
    WHERE removed_at IS NULL;

-- A rule set's would-be decisions in shadow, beside the live one's (compared day by day).
CREATE TABLE shadow_rule_decisions (
    tx_id          text NOT NULL,
    rules_version  text NOT NULL,
    event_time     timestamptz NOT NULL,
    decision       text NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    rule_hits      text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tx_id, rules_version)
);
CREATE INDEX shadow_rule_decisions_time ON shadow_rule_decisions USING brin (event_time);
