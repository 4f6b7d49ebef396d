"""The SDK: what a pipeline author writes with, and what runs it.

Owns steps (`step`), pipelines traced once into a DAG of step calls (`pipeline`, over
`tracing`), loading a pipeline from `MODULE:ATTRIBUTE` (`loader`), the requests a pipeline
accepts (`requests`, checked by `validation`), one invocation's state (`invocation`) and
the runner that executes it (`runner`), and outputs to JSON (`serialize`).

May import: `service.errors`, `service.status`, `service.settings`. Nothing from the
server, the run store, the client, the CLI or the deployments: a pipeline runs without any
of them.
"""
