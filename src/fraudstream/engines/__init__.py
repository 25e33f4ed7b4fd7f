"""Stream engines: thin wrappers that run features, model and policy over Kafka."""
