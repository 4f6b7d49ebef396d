"""Runs: the run model, the durable run store, and everything that moves a run along.

Owns the run model (`model`: a stored `Run`, how a run ends, its events; the statuses
are `service.status`'s), the run store (`store`: runs and their events in SQLite or
PostgreSQL over `database` and `tables`, a `store_*` module per family of queries,
`event_log`, and Alembic's script directory `migrations/`), step checkpoints (the
`checkpointer` of a run's attempts and its resume, over `checkpoint_formats` and the
`checkpoint_objects` store for large ones), the write-behind recorder of `/invoke` runs and
step events, run records as the API's JSON, and the run
manager: the facade the server holds (`manager`) over dispatch and execution, leases and
recovery, the webhook outbox, the event stream, retention and retries of ended runs
(`reruns`), a module each. `tasks`
holds background tasks for the server too.

May import: `service.sdk`, `service.observe`, `service.errors`, `service.status`,
`service.settings`, `service.files`. Nothing from the server (HTTP is the server's
business), the client, the CLI or the deployments.
"""
