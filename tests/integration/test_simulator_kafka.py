"""The simulator and replay against the real broker: rates, labels, tokenisation, clean stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from confluent_kafka.cimpl import NewTopic

from fraudstream import bus
from fraudstream.clock import SystemClock
from fraudstream.config import Settings, TopicSettings
from fraudstream.privacy import looks_like_card_number
from fraudstream.schema import Label, Transaction, decode_label, decode_transaction
from fraudstream.simulator.generator import preset
from fraudstream.simulator.publish import Publisher, simulate_live
from fraudstream.telemetry import scrape

from ..conftest import free_port, overrides_env, run_cli
from ..kafka_kit import read_topic
from ..unit.test_adapters import CARDS, SPARKOV_HEADER, _sparkov_row, _write_csv


@pytest.fixture
def kafka_settings(stack_settings: Settings) -> Settings:
    """The session's broker with topics of this test's own."""
    run = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        transactions=f"tx-{run}", labels=f"labels-{run}", alerts=f"alerts-{run}", dlq=f"dlq-{run}"
    )
    kafka = stack_settings.kafka.model_copy(update={"topics": topics})
    bus.ensure_topics(kafka)
    return stack_settings.model_copy(update={"kafka": kafka})


@pytest.mark.parametrize("rate", [500, 4000])
def test_live_rate_is_held_within_two_percent(kafka_settings: Settings, rate: int) -> None:
    count = rate * 5
    params = preset("default", n_customers=2_000, n_terminals=4_000, seed=3)
    publisher = Publisher(kafka_settings.kafka)
    report = simulate_live(publisher, params, rate=rate, count=count, clock=SystemClock())
    publisher.close()  # every message acknowledged (a dropped producer loses its queue)
    assert report.sent == count
    messages = read_topic(kafka_settings, kafka_settings.kafka.topics.transactions, settle_s=0)
    assert len(messages) == count
    # In live mode the event time is the moment each transaction was sent. Compared as
    # instants: as text, "…:05Z" (a whole second) sorts after "…:05.730000Z".
    sent_at = sorted(pd.Timestamp(json.loads(m.value())["event_time"]) for m in messages)
    span = sent_at[-1] - sent_at[0]
    achieved = (count - 1) / span.total_seconds()
    assert abs(achieved - rate) / rate <= 0.02, achieved
    now = SystemClock().now()
    for message in messages[:500]:
        record = decode_transaction(message.value(), now=now)
        assert isinstance(record, Transaction)
        assert message.key().decode() == record.card_id
        assert b"scenario" not in message.value() and b"is_fraud" not in message.value()


def test_accelerated_clock_delivers_delayed_labels(kafka_settings: Settings) -> None:
    params = preset("default", n_customers=1_000, n_terminals=2_000, seed=5)
    publisher = Publisher(kafka_settings.kafka)
    report = simulate_live(
        publisher, params, rate=20_000, count=60_000, clock=SystemClock(), accelerated=True
    )
    publisher.close()
    assert report.labels_sent > 0 and report.frauds >= report.labels_sent
    txs = {}
    for message in read_topic(kafka_settings, kafka_settings.kafka.topics.transactions, settle_s=0):
        record = decode_transaction(message.value(), now=SystemClock().now().replace(year=2100))
        assert isinstance(record, Transaction)
        txs[record.tx_id] = record
    labels = [
        decode_label(m.value())
        for m in read_topic(kafka_settings, kafka_settings.kafka.topics.labels, settle_s=0)
    ]
    assert len(labels) == report.labels_sent
    for label in labels:
        assert isinstance(label, Label) and label.is_fraud and label.scenario
        assert label.reported_at > txs[label.tx_id].event_time  # reported after it happened
    span = max(t.event_time for t in txs.values()) - min(t.event_time for t in txs.values())
    assert span.days >= 3  # simulation time ran much faster than the few seconds of sending


def test_the_live_demo_keeps_a_steady_stream_once_it_reaches_the_present(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """`up`'s simulator: a month of accelerated history, then simulator.live_rate
    transactions/s stamped now, for as long as it runs; its metrics say so."""
    port = free_port()
    env = _cli_env(
        kafka_settings,
        **{"simulator.live_rate": "50", "metrics.simulator_port": str(port),
           "state_dir": str(tmp_path / "state")},
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "simulate", "--accelerated", "--forever",
         "--rate", "20000", "--customers", "100", "--terminals", "200"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 120
        while scrape(url).get("fraudstream_simulator_caught_up") != 1.0:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the history never reached the present"
            time.sleep(0.2)
        caught_up = scrape(url)["fraudstream_simulator_transactions_sent_total"]
        # Held at the live rate: time the next 150 transactions.
        started = time.monotonic()
        while scrape(url)["fraudstream_simulator_transactions_sent_total"] < caught_up + 150:
            assert time.monotonic() - started < 60, "the live stream stalled"
            time.sleep(0.05)
        rate = 150 / (time.monotonic() - started)
        found = scrape(url)
    finally:
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert 40 <= rate <= 60, rate
    assert found["fraudstream_simulator_target_rate"] == 50
    assert 35 <= found["fraudstream_simulator_rate"] <= 65
    assert found["fraudstream_simulator_labels_sent_total"] > 0  # a month of frauds reported
    messages = read_topic(kafka_settings, kafka_settings.kafka.topics.transactions, settle_s=0)
    assert len(messages) >= caught_up + 150
    newest = max(pd.Timestamp(json.loads(m.value())["event_time"]) for m in messages)
    oldest = min(pd.Timestamp(json.loads(m.value())["event_time"]) for m in messages)
    now = pd.Timestamp.now(tz="UTC")
    assert now - newest < pd.Timedelta(seconds=30)  # stamped now, not at the simulation's time
    assert newest - oldest > pd.Timedelta(days=25)  # after a month of history


def test_sigterm_stops_cleanly_with_everything_delivered(kafka_settings: Settings) -> None:
    env = _cli_env(kafka_settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "simulate", "--rate", "2000", "--duration", "120s",
         "--customers", "1000", "--terminals", "2000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(6)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    sent = int(stdout.split("sent ")[1].split(" transactions")[0].replace(",", ""))
    assert sent > 2_000
    transactions = kafka_settings.kafka.topics.transactions
    assert len(read_topic(kafka_settings, transactions, settle_s=0)) == sent


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    topics = settings.kafka.topics
    return overrides_env(
        {
            "state_dir": str(settings.state_dir),
            "kafka.port": str(settings.kafka.port),
            "kafka.controller_port": str(settings.kafka.controller_port),
            "database.port": str(settings.database.port),
            "kafka.topics.transactions": topics.transactions,
            "kafka.topics.labels": topics.labels,
            "kafka.topics.alerts": topics.alerts,
            "kafka.topics.dlq": topics.dlq,
            **extra,
        }
    )


def test_replay_of_a_kaggle_file_sends_tokens_never_card_numbers(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    rows = [_sparkov_row(i) for i in range(8)] + [_sparkov_row(8, amt="lots")]
    path = _write_csv(tmp_path / "fraudTrain.csv", SPARKOV_HEADER, rows)
    env = _cli_env(kafka_settings, **{"privacy.token_key": "replay-test-key-0123456789"})
    result = run_cli("replay", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "skipped row 9, amt: not a number: 'lots'" in result.stderr
    assert "sparkov: read 9 rows, skipped 1 bad; sent 8 transactions and 1 labels" in result.stdout
    txs = read_topic(kafka_settings, kafka_settings.kafka.topics.transactions, settle_s=0)
    labels = read_topic(kafka_settings, kafka_settings.kafka.topics.labels, settle_s=0)
    assert len(txs) == 8 and len(labels) == 1
    everything = b"".join(m.value() + (m.key() or b"") for m in txs + labels).decode()
    assert not any(number in everything for number in CARDS)
    assert not looks_like_card_number(everything + result.stdout + result.stderr)
    assert json.loads(txs[0].value())["card_id"].startswith("card_")


def test_replay_at_real_time_times_n_follows_event_time(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    # Eight transactions one minute apart, replayed at 60 x real time: about 7 s in all.
    # (No frauds: their labels come 7 days of event time later, which would pace the end.)
    # The topic keeps the producer's timestamps, which is what the pacing is about.
    paced = kafka_settings.kafka.topics.transactions + "-paced"
    admin = bus.admin_client(kafka_settings.kafka)
    admin.create_topics([NewTopic(paced, num_partitions=1, replication_factor=1)])[paced].result(30)
    kafka_settings = kafka_settings.model_copy(
        update={
            "kafka": kafka_settings.kafka.model_copy(
                update={
                    "topics": kafka_settings.kafka.topics.model_copy(update={"transactions": paced})
                }
            )
        }
    )
    rows = [_sparkov_row(i, is_fraud=0) for i in range(8)]
    path = _write_csv(tmp_path / "paced.csv", SPARKOV_HEADER, rows)
    env = _cli_env(kafka_settings, **{"privacy.token_key": "replay-test-key-0123456789"})
    started = time.monotonic()
    result = run_cli("replay", str(path), "--speed", "60", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    messages = read_topic(kafka_settings, kafka_settings.kafka.topics.transactions, settle_s=0)
    stamps = sorted(m.timestamp()[1] for m in messages)
    assert 6.5 <= (stamps[-1] - stamps[0]) / 1000 <= 7.5
    assert elapsed >= 7
