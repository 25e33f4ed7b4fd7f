-- Feature drift and the terminal map. A model's training profile (decile cut points and
-- shares of a few key features, score shares) is stored once per version by the engine that
-- loads it; each batch's feature values are counted into those bins per hour (drift is
-- watched over hours and days, so finer rows would only cost reads). Terminal locations are kept once per terminal, from the
-- coordinates its transactions carry.
CREATE TABLE model_profiles (
    model_version  text PRIMARY KEY,
    profile        jsonb NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_hour (
    hour           timestamptz NOT NULL,
    engine         text NOT NULL,
    model_version  text NOT NULL,
    feature        text NOT NULL,
    counts         bigint[] NOT NULL,
    PRIMARY KEY (hour, engine, model_version, feature)
);

CREATE TABLE terminal_locations (
    terminal_id  text PRIMARY KEY,
    x            double precision,
    y            double precision,
    lat          double precision,
    lon          double precision
);
