"""Pure, engine-independent features: state + a batch in arrival order → new state + columns.

No Kafka, Spark or database here: the local engine, the Spark engine and offline training all
call this code, which is how training and serving cannot disagree.
"""

from fraudstream.features.card import CardState
from fraudstream.features.definitions import FEATURE_NAMES, FEATURES_VERSION, describe
from fraudstream.features.pipeline import FeatureComputer, history_features
from fraudstream.features.terminal import TerminalActivity, TerminalTable

__all__ = [
    "FEATURES_VERSION",
    "FEATURE_NAMES",
    "CardState",
    "FeatureComputer",
    "TerminalActivity",
    "TerminalTable",
    "describe",
    "history_features",
]
