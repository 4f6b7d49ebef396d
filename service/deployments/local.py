"""Local deployments: `pipeserve serve` as detached background processes, with a record each.

A deployment is a `pipeserve serve` process started in a session of its own, so that one
signal to its process group reaches the server and any uvicorn workers, and a JSON record
in `<home>/deployments/<name>.json`. The record keeps the process's create time beside its
pid: a pid the system has since given to another process reads as `stale`, never as ours.
A key generated at deploy lives only in `<name>.key` (mode 0600); the server gets its hash.
Secret settings (the webhook secret) live only in `<name>.secrets` (mode 0600); the record
shows them masked.

Its modules: `records` (the record and the files kept), `processes` (finding and stopping a
server), `logfiles` (a server's log), `launch` (starting one server until it is ready),
`deployer` (deploy, update, deprovision, delete).
"""

from service.deployments.deployer import Deployer, fetch_info, talking_to
from service.deployments.launch import StartFailed
from service.deployments.logfiles import follow_log, log_tail, read_log
from service.deployments.processes import status, uptime
from service.deployments.records import DeploymentError, DeploymentRecord, DeploymentStore

__all__ = [
    "Deployer",
    "DeploymentError",
    "DeploymentRecord",
    "DeploymentStore",
    "StartFailed",
    "fetch_info",
    "follow_log",
    "log_tail",
    "read_log",
    "status",
    "talking_to",
    "uptime",
]
