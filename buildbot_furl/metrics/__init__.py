"""Prometheus metrics and health endpoints for the master and the worker
(off unless asked: ``metrics_listen`` / ``--metrics``)."""
