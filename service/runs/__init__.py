"""Runs: the run model, the durable run store, and everything that moves a run along.

Owns the run store (runs and their events in SQLite or PostgreSQL, its tables and Alembic
migrations), the write-behind recorder of `/invoke` runs, run records as the API's JSON,
the run manager (dispatch, leases and recovery, the event stream, retention) and the
webhook outbox.

May import: `service.sdk`, `service.observe`, `service.errors`, `service.settings`,
`service.files`. Nothing from the server (HTTP is the server's business), the client, the
CLI or the deployments.
"""
