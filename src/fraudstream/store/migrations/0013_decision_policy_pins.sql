-- Verdicts leave the engine before their step is committed (ADR 7, amended 2026-12-07), so a
-- decision the API has answered may have to be made again after a crash. It must come out
-- the same: each partition's model and rules in force are pinned here before the engine
-- decides anything with them, and a restarted engine replays with the pinned ones.
CREATE TABLE decision_pins (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    model_version   text NOT NULL,
    rules_version   text NOT NULL,
    pinned_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Every rule set an engine has decided with, lists included: the rule book keeps its
-- versions, but the live lists change in place.
CREATE TABLE decision_rule_sets (
    rules_version   text PRIMARY KEY,
    rules           jsonb NOT NULL,       -- policy.RuleSet without its lists
    lists           jsonb NOT NULL,       -- list name → sorted entries
    first_used_at   timestamptz NOT NULL DEFAULT now()
);
