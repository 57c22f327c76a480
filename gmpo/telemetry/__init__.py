"""Telemetry: per-step metric collection (one host sync), sinks (progress bar, jsonl, TensorBoard, W&B),
windowed stability statistics and the training guard."""
from gmpo.telemetry.collector import Reducer, StepMetrics

__all__ = ["Reducer", "StepMetrics"]
