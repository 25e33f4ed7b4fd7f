-- What the dashboard's Drift and Model quality pages read instead of the predictions table:
-- a score histogram in every minute rollup (written by the sink), and per matured day the
-- scores of fraudulent and legitimate transactions in 100 bins (written with quality_daily
-- once the day's labels have matured), from which the precision-recall curve and the
-- threshold explorer are drawn for any period.
ALTER TABLE rollup_minute ADD COLUMN score_hist bigint[] NOT NULL DEFAULT '{}';

CREATE TABLE quality_histogram (
    day            date NOT NULL,
    model_version  text NOT NULL,
    bin            integer NOT NULL CHECK (bin >= 0 AND bin < 100),
    legitimate     bigint NOT NULL,
    fraud          bigint NOT NULL,
    PRIMARY KEY (day, model_version, bin)
);

ALTER TABLE quality_daily ADD COLUMN flagged bigint NOT NULL DEFAULT 0;
ALTER TABLE quality_daily ADD COLUMN flagged_frauds bigint NOT NULL DEFAULT 0;
