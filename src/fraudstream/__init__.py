"""fraudstream: real-time card-fraud detection on Apache Kafka and PostgreSQL."""

__version__ = "0.1.0"
