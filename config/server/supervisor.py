"""Worker processes: uvicorn's Multiprocess supervisor with two changes.

* On SIGTERM/SIGINT the parent closes its own copy of the listening socket before asking the
  workers to drain: the socket is gone once every worker closed its copy too, so new
  connections are refused at once instead of waiting in a backlog nobody will ever accept.
  Each worker stops accepting, finishes the requests in flight (at most `WEB_GRACEFUL_TIMEOUT`
  s) and exits; the parent exits when all have.
* A worker that died (and is replaced) or exited is marked dead for Prometheus' multiprocess
  mode, so its live gauges stop being summed into /metrics (its counters stay).
"""

from __future__ import annotations

import logging
import os

from uvicorn.supervisors.multiprocess import Multiprocess

logger = logging.getLogger("uvicorn.error")


def _mark_dead(pid: int | None) -> None:
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class Supervisor(Multiprocess):
    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        super().join_all()
        for process in self.processes:
            _mark_dead(process.pid)

    def keep_subprocess_alive(self) -> None:
        before = {id(process): process.pid for process in self.processes}
        super().keep_subprocess_alive()
        after = {id(process) for process in self.processes}
        for key, pid in before.items():
            if key not in after:
                _mark_dead(pid)
