"""A loaded model, ready to score feature batches and explain its scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudstream.features import FEATURES_VERSION
from fraudstream.model.explain import Reason, top_reasons
from fraudstream.model.profile import FeatureProfile
from fraudstream.model.registry import ModelArtifact, RegistryError

__all__ = ["Scorer"]


class Scorer:
    def __init__(self, artifact: ModelArtifact) -> None:
        if artifact.metadata["features_version"] != FEATURES_VERSION:
            raise RegistryError(
                f"model {artifact.version} was built for features "
                f"v{artifact.metadata['features_version']}, "
                f"this fraudstream computes v{FEATURES_VERSION}: train a new model"
            )
        self.artifact = artifact
        self.version = artifact.version
        self.names: list[str] = list(artifact.metadata["features"])
        self.thresholds: dict[str, float] = artifact.metadata["thresholds"]
        self.profile = FeatureProfile.from_metadata(artifact.metadata)
        self._backend = artifact.backend

    def matrix(self, features: pd.DataFrame) -> np.ndarray:
        if list(features.columns) != self.names:  # selecting costs more than checking
            features = features[self.names]
        matrix: np.ndarray = features.to_numpy(dtype=float)
        return matrix

    def score(self, features: pd.DataFrame) -> np.ndarray:
        return self._backend.predict(self.artifact.model, self.matrix(features))

    def explain(self, features: pd.DataFrame, top: int = 3) -> list[list[Reason]]:
        matrix = self.matrix(features)
        contributions = self._backend.contributions(self.artifact.model, matrix)
        return top_reasons(contributions, matrix, self.names, top)
