"""Gradient-boosted fraud scoring: training on time-ordered folds, metrics, registry, reasons."""
