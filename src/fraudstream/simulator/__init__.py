"""Realistic card traffic with tagged fraud scenarios and delayed labels, and dataset adapters."""
