"""Prometheus metrics: per-request instruments, scrape-time gauges, and ``GET /metrics``."""
