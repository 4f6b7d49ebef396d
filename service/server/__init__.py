"""The HTTP server: the Starlette app that serves one pipeline.

Owns the app's wiring and lifecycle (`app`), `/invoke` and the info routes, the runs routes
and Prophecy's trigger API (`runs_routes`), the edge middleware (request ids, auth, body
limits, access logs), connection guards, response models (`schema`), the OpenAPI document,
and the dashboard and docs pages with their static files (`ui`).

May import: `service.sdk`, `service.runs`, `service.observe`, `service.auth`,
`service.errors`, `service.settings`. Nothing from the client, the CLI or the deployments.
The app has no process-wide side effects: signals and exit belong to the CLI.
"""
