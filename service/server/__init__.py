"""The HTTP server: the Starlette app that serves one pipeline.

Owns the app's wiring (`app`: `create_app`), its lifecycle (`lifecycle`: on_init beside
the server, drain, shutdown, and the `ProcessHooks` a process may add), `/invoke`
(`invoke`), the probes and descriptions (`about`), the runs routes and Prophecy's trigger
API (`runs_routes`), the one route table (`routes`) and the OpenAPI document derived from
it (`openapi`), the edge middleware (request ids, auth, body limits, access logs), the
connection guards, the response models (`schema`), and the dashboard and docs pages with
their static files (`ui`).

May import: `service.sdk`, `service.runs`, `service.observe`, `service.auth`,
`service.errors`, `service.status`, `service.settings`. Nothing from the client, the CLI or
the deployments. The app has no process-wide side effects: signals and exit belong to the
CLI (`service.cli.server`).
"""
