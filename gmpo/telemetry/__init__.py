"""Telemetry: per-step metric collection with one host sync (:mod:`gmpo.telemetry.collector`), sinks (a
registry: progress bar, jsonl, TensorBoard, W&B; :mod:`gmpo.telemetry.sinks`), windowed stability statistics
(:mod:`gmpo.telemetry.stability`) and the fixed histogram bins readers share (:mod:`gmpo.telemetry.bins`,
torch-free). Nothing is imported eagerly here, so readers such as the dashboard can use the bins without torch.
"""
