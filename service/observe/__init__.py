"""Observability: Prometheus metrics (`metrics`) and structured JSON logs (`logs`).

May import: `service.sdk` (the records a metric counts), `service.errors`. Imported by the
server, the run store and the CLI; imports none of them.
"""
