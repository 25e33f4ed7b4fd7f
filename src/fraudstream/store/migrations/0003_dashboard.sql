-- The dashboard: the latest alerts through an index (no scan of the predictions table), and
-- one analyst verdict per case, enforced even when two analysts click at once.
CREATE INDEX fraud_predictions_alerts ON fraud_predictions (stored_at DESC)
    WHERE decision <> 'approve';
DROP INDEX review_decisions_tx;
CREATE UNIQUE INDEX review_decisions_once ON review_decisions (tx_id);
