"""Which Kafka errors the engines wait out (a broker restart, a leader election) and which
they report: a crash in a broker restart was an engine stopped by NOT_LEADER_FOR_PARTITION."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from fraudstream.bus.clients import retry, transient


@pytest.mark.parametrize(
    "code",
    [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
     KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError.NOT_COORDINATOR],
)  # fmt: skip
def test_a_broker_restart_is_waited_out(code: int) -> None:
    assert transient(KafkaException(KafkaError(code)))


@pytest.mark.parametrize(
    "code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED]
)
def test_a_configuration_error_is_reported(code: int) -> None:
    assert not transient(KafkaException(KafkaError(code)))


def test_retry_rides_out_a_leader_election(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fraudstream.bus.clients.time.sleep", lambda _s: None)
    answers = iter([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])

    def call() -> int:
        code = next(answers, None)
        if code is not None:
            raise KafkaException(KafkaError(code))
        return 42

    assert retry(call, "watermarks") == 42
