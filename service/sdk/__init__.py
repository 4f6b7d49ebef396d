"""The SDK: what a pipeline author writes with, and what runs it.

Owns steps (`step`), pipelines traced into a DAG of step calls (`pipeline`), loading a
pipeline from `MODULE:ATTRIBUTE` (`loader`), the request a pipeline accepts (`requests`),
the runner that executes one invocation (`runner`), and outputs to JSON (`serialize`).

May import: `service.errors`, `service.settings`. Nothing from the server, the run store,
the client, the CLI or the deployments: a pipeline runs without any of them.
"""
