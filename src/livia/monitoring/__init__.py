"""Monitoring: the `/stats` JSON, Prometheus `/metrics` and the live `/dashboard` page.

Everything here only *reads* the running app (`request.app.state.livia`): the
concurrency manager's per-upstream stats, the conversations' counters and the tool
servers' status.
"""

from livia.monitoring.auth import unauthorized
from livia.monitoring.metrics import LiviaCollector, metrics_registry
from livia.monitoring.routes import monitoring_router
from livia.monitoring.snapshot import snapshot

__all__ = ["LiviaCollector", "metrics_registry", "monitoring_router", "snapshot", "unauthorized"]
