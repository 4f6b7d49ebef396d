"""The SDK: what a pipeline author writes with, and what runs it.

Owns steps (`step`) and their retry policies (`retries`), pipelines traced once into a DAG
of step calls (`pipeline`, over `tracing`), loading a pipeline from `MODULE:ATTRIBUTE`
(`loader`), the requests a pipeline accepts (`requests`, checked by `validation`), one
invocation's state (`invocation`, with the `Checkpointer` protocol a batch run fills in),
the runner that executes it (`runner`, which schedules the DAG) calling each step
(`calling`: arguments, retries, outputs, checkpoint), and outputs to JSON (`serialize`).

May import: `service.errors`, `service.status`, `service.settings`. Nothing from the
server, the run store, the client, the CLI or the deployments: a pipeline runs without any
of them.
"""
