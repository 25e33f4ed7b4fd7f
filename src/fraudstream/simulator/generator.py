"""Vectorised transaction generation with tagged fraud scenarios and delayed labels.

Legitimate traffic and the first three scenarios follow the Fraud Detection Handbook
(Le Borgne et al., ch. 3): amounts over a threshold; compromised terminals whose every
transaction is fraudulent for 28 days; compromised cards with a third of their transactions
multiplied by 5 for 14 days. Three more are patterns fraud teams see: card testing, account
takeover with impossible travel, and a merchant-category shift.

Every random draw comes from a generator seeded by (seed, purpose, day), so the same
parameters give byte-identical output, and any block of days can be generated on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from fraudstream.simulator.population import (
    HIGH_RISK_CATEGORIES,
    MERCHANT_CATEGORIES,
    Population,
    make_population,
)

__all__ = [
    "HISTORY_COLUMNS",
    "PRESETS",
    "SCENARIOS",
    "SimulationParams",
    "generate",
    "generate_blocks",
    "new_stream",
    "params_json",
    "preset",
]

DAY = 86_400
SCENARIOS = (
    "amount_threshold",
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "impossible_travel",
    "category_shift",
)
HANDBOOK_SCENARIOS = SCENARIOS[:3]

HISTORY_COLUMNS = (
    "tx_id", "event_time", "card_id", "terminal_id", "amount", "currency",
    "merchant_category", "channel", "customer_x", "customer_y", "terminal_x", "terminal_y",
    "is_fraud", "scenario", "label_reported_at",
)  # fmt: skip


@dataclass(frozen=True)
class LabelDelay:
    """When fraud is reported: log-normal delay (median, spread) capped at a maximum; a
    fraction is never reported; a transaction with no report after ``maturity_days`` counts
    as legitimate."""

    median_days: float = 6.0
    sigma: float = 0.9
    max_days: float = 90.0
    unreported_fraction: float = 0.07
    maturity_days: float = 60.0


@dataclass(frozen=True)
class SimulationParams:
    n_customers: int = 5_000
    n_terminals: int = 10_000
    radius: float = 5.0
    days: int = 183  # 0: endless (live simulation)
    start: datetime = datetime(2026, 4, 1, tzinfo=timezone.utc)
    seed: int = 0
    scenarios: tuple[str, ...] = SCENARIOS
    # Handbook scenarios
    amount_threshold: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_cards_per_day: int = 3
    card_compromise_days: int = 14
    compromised_card_fraction: float = 1 / 3
    compromised_card_multiplier: float = 5.0
    # Further scenarios (per day)
    card_testing_per_day: float = 1.0
    impossible_travel_per_day: float = 1.0
    category_shift_per_day: float = 1.0
    category_shift_days: int = 7
    weekend_activity: float = 2 / 3  # share of a weekday's transactions made on a weekend day
    currency: str = "EUR"
    labels: LabelDelay = field(default_factory=LabelDelay)
    tx_id_prefix: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenario(s) {sorted(unknown)}: choose from {SCENARIOS}")
        if self.n_customers < 1 or self.n_terminals < 1 or self.days < 0 or self.radius <= 0:
            raise ValueError("customers and terminals must be ≥ 1, days ≥ 0, radius > 0")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")

    @property
    def id_prefix(self) -> str:
        """What every transaction id starts with: ``tx_id_prefix`` when given, else
        ``s<seed>-h<digest>-``, the digest (10 hex digits of SHA-256) taken over every parameter,
        so that the same parameters give the same ids and any others never share one."""
        if self.tx_id_prefix is not None:
            return self.tx_id_prefix
        digest = hashlib.sha256(params_json(self).encode()).hexdigest()[:10]
        return f"s{self.seed}-h{digest}-"

    def live(self, stream: str) -> SimulationParams:
        """The endless live stream ``stream`` (see ``new_stream``) of these parameters: their
        traffic going on without end, under ids ``s<seed>-<stream>-<serial>`` of its own."""
        base = self.tx_id_prefix if self.tx_id_prefix is not None else f"s{self.seed}-"
        return replace(self, days=0, tx_id_prefix=f"{base}{stream}-")


def new_stream() -> str:
    """A new live stream's id namespace: ``r`` and 10 random hex digits. Random rather than
    counted, so that simulators with different state directories (the service's container and
    a shell beside it) cannot draw the same one; a history's namespace starts with ``h``."""
    return "r" + secrets.token_hex(5)


def params_json(params: SimulationParams) -> str:
    """The parameters as canonical JSON (a history file's metadata)."""

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(type(value))

    return json.dumps(dataclasses.asdict(params), default=default, sort_keys=True)


PRESETS: dict[str, SimulationParams] = {
    # The Handbook's set-up: 5,000 customers, 10,000 terminals, radius 5, 183 days, its three
    # scenarios only; all frauds known within 7 days, as its evaluation protocol assumes.
    "handbook": SimulationParams(
        start=datetime(2018, 4, 1, tzinfo=timezone.utc),
        scenarios=HANDBOOK_SCENARIOS,
        weekend_activity=1.0,
        labels=LabelDelay(
            median_days=2.0, sigma=0.6, max_days=7.0, unreported_fraction=0.0, maturity_days=7.0
        ),
    ),
    "default": SimulationParams(),
}


def preset(name: str, **overrides: Any) -> SimulationParams:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


BLOCK_DAYS = 7
"""Generation works a week at a time; fixed, so that output never depends on how it is read."""


def generate(params: SimulationParams) -> pd.DataFrame:
    """The whole history as one frame (columns ``HISTORY_COLUMNS``), in event-time order."""
    return pd.concat(list(generate_blocks(params)), ignore_index=True)


def generate_blocks(
    params: SimulationParams, *, population: Population | None = None
) -> Iterator[pd.DataFrame]:
    """Consecutive blocks of ``BLOCK_DAYS`` days in event-time order; endless when
    ``params.days`` is 0 (the live simulator stops when it has sent enough)."""
    block_days, first_day = BLOCK_DAYS, 0
    population = population or make_population(
        params.n_customers, params.n_terminals, params.radius, params.seed
    )
    serial = 0
    day = first_day
    while True:
        n_days = block_days if params.days <= 0 else min(block_days, first_day + params.days - day)
        if n_days <= 0:
            return
        frame = _block(params, population, day, n_days, serial)
        serial += len(frame)
        day += n_days
        yield frame


# --- one block ---------------------------------------------------------------------------


@dataclass
class _Columns:
    """Transactions as parallel arrays while scenarios are applied."""

    customer: np.ndarray
    terminal: np.ndarray
    seconds: np.ndarray  # since params.start
    amount: np.ndarray
    scenario: np.ndarray  # 0 = legitimate, else 1 + index in SCENARIOS

    @property
    def day(self) -> np.ndarray:
        return self.seconds // DAY

    def append(self, other: _Columns) -> _Columns:
        return _Columns(
            *(np.concatenate([a, b]) for a, b in zip(self.arrays(), other.arrays(), strict=True))
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.customer, self.terminal, self.seconds, self.amount, self.scenario

    def take(self, index: np.ndarray) -> _Columns:
        return _Columns(*(array[index] for array in self.arrays()))


def _code(name: str) -> int:
    return SCENARIOS.index(name) + 1


def _block(
    params: SimulationParams, pop: Population, first_day: int, n_days: int, serial: int
) -> pd.DataFrame:
    cols = _legitimate(params, pop, first_day, n_days)
    enabled = set(params.scenarios)
    if "amount_threshold" in enabled:
        cols.scenario[cols.amount > params.amount_threshold] = _code("amount_threshold")
    if "compromised_terminal" in enabled:
        _compromised_terminals(params, pop, cols, first_day, n_days)
    if "compromised_card" in enabled:
        _compromised_cards(params, pop, cols, first_day, n_days)
    if "category_shift" in enabled:
        _category_shift(params, pop, cols, first_day, n_days)
    for name, inject in (
        ("card_testing", _card_testing),
        ("impossible_travel", _impossible_travel),
    ):
        if name in enabled:
            for day in range(first_day, first_day + n_days):
                cols = cols.append(inject(params, pop, day))
    order = np.lexsort((cols.customer, cols.seconds))
    cols = cols.take(order)
    return _frame(params, pop, cols, serial)


def _legitimate(params: SimulationParams, pop: Population, first_day: int, n_days: int) -> _Columns:
    reachable = pop.reach_counts() > 0
    parts = []
    for day in range(first_day, first_day + n_days):
        rng = np.random.default_rng([params.seed, 10, day])
        counts = rng.poisson(pop.mean_tx_per_day)
        customer = np.repeat(np.arange(pop.n_customers), counts)
        # The Handbook's daily rhythm: time of day ~ N(12h, 20000 s), kept within the day.
        second = rng.normal(DAY / 2, 20_000, size=len(customer)).astype(np.int64)
        mean, std = pop.mean_amount[customer], pop.std_amount[customer]
        amount = rng.normal(mean, std)
        negative = amount < 0
        amount[negative] = rng.uniform(0, 2 * mean[negative])
        keep = (second > 0) & (second < DAY) & reachable[customer]
        customer, second, amount = customer[keep], second[keep], amount[keep]
        terminal = pop.pick_terminals(customer, rng.random(len(customer)))
        # Weekends: fewer transactions (dropped after drawing, so weekdays stay as they are).
        weekday = (params.start.weekday() + day) % 7
        if weekday >= 5 and params.weekend_activity < 1:
            keep = rng.random(len(customer)) < params.weekend_activity
            customer, second, amount, terminal = (
                customer[keep], second[keep], amount[keep], terminal[keep]
            )  # fmt: skip
        parts.append(
            _Columns(
                customer,
                terminal,
                second + day * DAY,
                np.round(amount, 2),
                np.zeros(len(customer), np.int8),
            )
        )
    return _concat(parts)


def _concat(parts: list[_Columns]) -> _Columns:
    arrays = [
        np.concatenate(group) for group in zip(*(part.arrays() for part in parts), strict=True)
    ]
    return _Columns(*arrays)


def _window_draws(
    params: SimulationParams, purpose: int, first_day: int, n_days: int, window: int
) -> Iterator[tuple[int, np.random.Generator]]:
    """Draw days whose compromise window overlaps the block (earlier blocks' draws included)."""
    for day in range(max(0, first_day - window + 1), first_day + n_days):
        yield day, np.random.default_rng([params.seed, purpose, day])


class _Index:
    """Transaction indices grouped by a key (terminal or card), in original order within a key."""

    def __init__(self, keys: np.ndarray, n_keys: int, days: np.ndarray) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.offsets = np.searchsorted(keys[self.order], np.arange(n_keys + 1))
        self.days = days

    def within(self, members: np.ndarray, first_day: int, window: int) -> np.ndarray:
        """Indices of transactions of ``members`` on days [first_day, first_day + window)."""
        found = [self.order[self.offsets[m] : self.offsets[m + 1]] for m in np.sort(members)]
        index = np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)
        day = self.days[index]
        return index[(day >= first_day) & (day < first_day + window)]


def _compromised_terminals(
    params: SimulationParams, pop: Population, cols: _Columns, first_day: int, n_days: int
) -> None:
    by_terminal = _Index(cols.terminal, pop.n_terminals, cols.day)
    window = params.terminal_compromise_days
    for day, rng in _window_draws(params, 20, first_day, n_days, window):
        terminals = rng.choice(pop.n_terminals, params.compromised_terminals_per_day, replace=False)
        cols.scenario[by_terminal.within(terminals, day, window)] = _code("compromised_terminal")


def _compromised_cards(
    params: SimulationParams, pop: Population, cols: _Columns, first_day: int, n_days: int
) -> None:
    by_card = _Index(cols.customer, pop.n_customers, cols.day)
    window = params.card_compromise_days
    for day, rng in _window_draws(params, 30, first_day, n_days, window):
        cards = rng.choice(pop.n_customers, params.compromised_cards_per_day, replace=False)
        candidates = by_card.within(cards, day, window)
        chosen = rng.choice(
            candidates, int(len(candidates) * params.compromised_card_fraction), replace=False
        )
        cols.amount[chosen] = np.round(cols.amount[chosen] * params.compromised_card_multiplier, 2)
        cols.scenario[chosen] = _code("compromised_card")


def _poisson_cards(rate: float, pop: Population, rng: np.random.Generator) -> np.ndarray:
    count = min(rng.poisson(rate), pop.n_customers)
    return rng.choice(pop.n_customers, count, replace=False)


def _category_shift(
    params: SimulationParams, pop: Population, cols: _Columns, first_day: int, n_days: int
) -> None:
    """A stolen card is spent where the thief can resell the goods: half of its purchases
    move to high-risk merchant categories (still near home), at higher amounts."""
    risky = np.flatnonzero(
        np.isin(pop.terminal_category, [MERCHANT_CATEGORIES.index(c) for c in HIGH_RISK_CATEGORIES])
    )
    if len(risky) == 0:
        return
    by_card = _Index(cols.customer, pop.n_customers, cols.day)
    window = params.category_shift_days
    for day, rng in _window_draws(params, 40, first_day, n_days, window):
        for card in _poisson_cards(params.category_shift_per_day, pop, rng):
            candidates = by_card.within(np.array([card]), day, window)
            candidates = candidates[cols.scenario[candidates] == 0]
            chosen = rng.choice(candidates, len(candidates) // 2, replace=False)
            if len(chosen) == 0:
                continue
            distance = np.linalg.norm(pop.terminal_xy[risky] - pop.customer_xy[card], axis=1)
            nearby = risky[np.argsort(distance)[:5]]
            cols.terminal[chosen] = rng.choice(nearby, len(chosen))
            cols.amount[chosen] = np.round(
                cols.amount[chosen] * rng.uniform(1.5, 3.0, len(chosen)), 2
            )
            cols.scenario[chosen] = _code("category_shift")


def _card_testing(params: SimulationParams, pop: Population, day: int) -> _Columns:
    """Bursts of tiny amounts at terminals the card never uses, then one large purchase."""
    rng = np.random.default_rng([params.seed, 50, day])
    rows: list[tuple[int, int, int, float]] = []
    for card in _poisson_cards(params.card_testing_per_day, pop, rng):
        second = int(rng.integers(0, DAY - 4 * 3600)) + day * DAY
        for _ in range(int(rng.integers(3, 9))):
            rows.append(
                (card, int(rng.integers(pop.n_terminals)), second, round(rng.uniform(0.5, 3.0), 2))
            )
            second += int(rng.integers(20, 120))
        second += int(rng.integers(300, 3600))
        rows.append(
            (card, int(rng.integers(pop.n_terminals)), second, round(rng.uniform(300, 1500), 2))
        )
    return _rows(rows, _code("card_testing"))


def _impossible_travel(params: SimulationParams, pop: Population, day: int) -> _Columns:
    """An account takeover: purchases far from home, in quick succession."""
    rng = np.random.default_rng([params.seed, 60, day])
    rows: list[tuple[int, int, int, float]] = []
    for card in _poisson_cards(params.impossible_travel_per_day, pop, rng):
        distance = np.linalg.norm(pop.terminal_xy - pop.customer_xy[card], axis=1)
        far = np.flatnonzero(distance > 40)
        if len(far) == 0:
            continue
        second = int(rng.integers(0, DAY - 4 * 3600)) + day * DAY
        for _ in range(int(rng.integers(2, 5))):
            amount = round(float(pop.mean_amount[card] * rng.uniform(2, 6)), 2)
            rows.append((card, int(rng.choice(far)), second, amount))
            second += int(rng.integers(300, 3600))
    return _rows(rows, _code("impossible_travel"))


def _rows(rows: list[tuple[int, int, int, float]], code: int) -> _Columns:
    if not rows:
        empty = np.empty(0, np.int64)
        return _Columns(empty, empty, empty, np.empty(0), np.empty(0, np.int8))
    customer, terminal, second, amount = (np.array(column) for column in zip(*rows, strict=True))
    return _Columns(
        customer.astype(np.int64),
        terminal.astype(np.int64),
        second.astype(np.int64),
        amount.astype(np.float64),
        np.full(len(rows), code, np.int8),
    )


def _report_times(params: SimulationParams, cols: _Columns, serial: int) -> np.ndarray:
    """Seconds (since start) at which each fraud is reported; NaN when never (or legitimate)."""
    rng = np.random.default_rng([params.seed, 70, serial])
    delay = params.labels
    fraud = cols.scenario > 0
    days = np.minimum(
        rng.lognormal(np.log(delay.median_days), delay.sigma, len(fraud)), delay.max_days
    )
    unreported = rng.random(len(fraud)) < delay.unreported_fraction
    reported = np.where(fraud & ~unreported, cols.seconds + days * DAY, np.nan)
    return reported


def _names(prefix: str, count: int) -> np.ndarray:
    return np.array([f"{prefix}{i:07d}" for i in range(count)], dtype=object)


def _frame(params: SimulationParams, pop: Population, cols: _Columns, serial: int) -> pd.DataFrame:
    n = len(cols.customer)
    prefix = params.id_prefix
    start = pd.Timestamp(params.start).as_unit("us")
    ids = np.arange(serial, serial + n)
    scenario_names = np.array([None, *SCENARIOS], dtype=object)
    reported = _report_times(params, cols, serial)
    categories = np.array(MERCHANT_CATEGORIES, dtype=object)[pop.terminal_category[cols.terminal]]
    frame = pd.DataFrame(
        {
            "tx_id": [f"{prefix}{i:09d}" for i in ids],
            "event_time": start + pd.to_timedelta(cols.seconds, unit="s"),
            "card_id": _names("C", pop.n_customers)[cols.customer],
            "terminal_id": _names("T", pop.n_terminals)[cols.terminal],
            "amount": cols.amount,
            "currency": params.currency,
            "merchant_category": categories,
            "channel": np.where(categories == "online", "ecom", "pos"),
            "customer_x": pop.customer_xy[cols.customer, 0],
            "customer_y": pop.customer_xy[cols.customer, 1],
            "terminal_x": pop.terminal_xy[cols.terminal, 0],
            "terminal_y": pop.terminal_xy[cols.terminal, 1],
            "is_fraud": cols.scenario > 0,
            "scenario": scenario_names[cols.scenario],
            "label_reported_at": start + pd.to_timedelta(np.round(reported), unit="s"),
        }
    )
    return frame
