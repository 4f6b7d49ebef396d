"""Deployments: where a pipeline server runs besides the foreground.

Owns local deployments (`pipeserve deploy`: detached server processes, their records and
log files; `local` is their public face over `records`, `processes`, `logfiles`, `launch`
and `deployer`) and Kubernetes manifests (`pipeserve k8s render`; `k8s` over
`k8s_options`, `k8s_objects` and `k8s_output`).

May import: `service.client` (a deployment is checked through its API), `service.auth`,
`service.settings`, `service.files`, `service.errors`. Nothing from the server or the run
store: a deployment is another process.
"""
