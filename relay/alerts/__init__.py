"""Operator alerts: detected from relay's state, queued in a durable outbox, sent to sinks."""
