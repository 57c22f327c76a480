"""The training guard: detectors of instability (:mod:`gmpo.guard.detectors`) and the hook that acts on
them (:mod:`gmpo.guard.guard`): warn, skip the update, roll back, stop."""
from gmpo.guard.detectors import robust_z
from gmpo.guard.guard import ACTIONS, Guard, Webhook
from gmpo.runs.files import read_alerts

__all__ = ["ACTIONS", "Guard", "Webhook", "read_alerts", "robust_z"]
