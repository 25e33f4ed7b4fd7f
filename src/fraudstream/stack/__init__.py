"""The local services fraudstream runs without Docker: Apache Kafka (KRaft) and PostgreSQL."""

from fraudstream.stack.compose import ServiceStatus, Stack, UpReport
from fraudstream.stack.process import ServiceError

__all__ = ["ServiceError", "ServiceStatus", "Stack", "UpReport"]
