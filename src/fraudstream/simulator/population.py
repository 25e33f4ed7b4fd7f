"""Card holders and terminals on a 100 × 100 map, after the Fraud Detection Handbook (ch. 3).

Each card holder has a home, a spending profile (mean amount, its spread, transactions per day)
and uses only the terminals within ``radius`` of home. Terminals have a merchant category.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HIGH_RISK_CATEGORIES", "MERCHANT_CATEGORIES", "Population", "make_population"]

MAP_SIZE = 100.0
MERCHANT_CATEGORIES = (
    "grocery", "restaurant", "fuel", "retail", "pharmacy",
    "travel", "online", "electronics", "jewelry", "gift_cards",
)  # fmt: skip
_CATEGORY_WEIGHTS = np.array([0.25, 0.2, 0.12, 0.15, 0.06, 0.04, 0.08, 0.05, 0.02, 0.03])
HIGH_RISK_CATEGORIES = ("electronics", "jewelry", "gift_cards")


@dataclass(frozen=True)
class Population:
    customer_xy: np.ndarray  # (n_customers, 2)
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_tx_per_day: np.ndarray
    terminal_xy: np.ndarray  # (n_terminals, 2)
    terminal_category: np.ndarray  # index into MERCHANT_CATEGORIES
    # Terminals within the radius of each customer, as CSR: reach[offsets[c]:offsets[c + 1]].
    reach: np.ndarray
    reach_offsets: np.ndarray
    radius: float

    @property
    def n_customers(self) -> int:
        return len(self.mean_amount)

    @property
    def n_terminals(self) -> int:
        return len(self.terminal_xy)

    def reach_counts(self) -> np.ndarray:
        return np.diff(self.reach_offsets)

    def pick_terminals(self, customers: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """One terminal per customer, uniformly among those in reach (customers must have one)."""
        counts = self.reach_counts()[customers]
        picked: np.ndarray = self.reach[
            self.reach_offsets[customers] + (uniforms * counts).astype(np.int64)
        ]
        return picked


def make_population(n_customers: int, n_terminals: int, radius: float, seed: int) -> Population:
    rng = np.random.default_rng([seed, 1])
    # Coordinates are rounded once, here, so distances computed downstream agree with reach.
    customer_xy = np.round(rng.uniform(0, MAP_SIZE, size=(n_customers, 2)), 4)
    mean_amount = rng.uniform(5, 100, size=n_customers)
    mean_tx_per_day = rng.uniform(0, 4, size=n_customers)
    terminal_rng = np.random.default_rng([seed, 2])
    terminal_xy = np.round(terminal_rng.uniform(0, MAP_SIZE, size=(n_terminals, 2)), 4)
    categories = np.random.default_rng([seed, 3]).choice(
        len(MERCHANT_CATEGORIES), size=n_terminals, p=_CATEGORY_WEIGHTS
    )
    reach, offsets = _terminals_within(customer_xy, terminal_xy, radius)
    return Population(
        customer_xy=customer_xy,
        mean_amount=mean_amount,
        std_amount=mean_amount / 2,
        mean_tx_per_day=mean_tx_per_day,
        terminal_xy=terminal_xy,
        terminal_category=categories,
        reach=reach,
        reach_offsets=offsets,
        radius=radius,
    )


def _terminals_within(
    customers: np.ndarray, terminals: np.ndarray, radius: float, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists (ascending terminal index) of terminals within ``radius`` of each customer.

    Terminals are bucketed in a grid of ``radius``-sized cells, so each customer is compared
    only with the terminals of its 3 x 3 neighbouring cells: linear in the population instead
    of customers x terminals. Distances are computed exactly as a brute-force scan would.
    """
    n_customers = len(customers)
    if n_customers == 0 or len(terminals) == 0:
        return np.empty(0, np.int64), np.zeros(n_customers + 1, np.int64)
    terminal_cells = np.floor(terminals / radius).astype(np.int64) + 1  # +1: neighbours >= 0
    stride = int(terminal_cells.max()) + 3
    terminal_keys = terminal_cells[:, 0] * stride + terminal_cells[:, 1]
    by_cell = np.argsort(terminal_keys, kind="stable")
    sorted_keys = terminal_keys[by_cell]
    pairs = []
    for start in range(0, n_customers, chunk):
        block = customers[start : start + chunk]
        cells = np.clip(np.floor(block / radius).astype(np.int64) + 1, 0, stride - 2)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                keys = (cells[:, 0] + dx) * stride + (cells[:, 1] + dy)
                low = np.searchsorted(sorted_keys, keys, side="left")
                found = np.searchsorted(sorted_keys, keys, side="right") - low
                rows = np.repeat(np.arange(len(block)), found)
                first = np.repeat(low - (np.cumsum(found) - found), found)
                cols = by_cell[np.arange(len(rows)) + first]
                squared = ((block[rows] - terminals[cols]) ** 2).sum(axis=1)
                near = squared < radius * radius
                pairs.append((rows[near] + start, cols[near]))
    rows = np.concatenate([r for r, _ in pairs])
    cols = np.concatenate([c for _, c in pairs])
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=n_customers)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return cols[order].astype(np.int64), offsets
