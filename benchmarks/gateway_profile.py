"""Where a `/gw` request's time goes: py-spy samples the production server under a wrk load.

    .venv/bin/python benchmarks/gateway_profile.py [--slow] [--connections 1024] [--duration 15]
                                                   [--out var/bench/profile] [--native]

Starts the benchmark upstream (2 uvloop processes, `/slow/…` after 100 ms, anything else at
once), the production server (tests/support/servers.py::server_command, what scripts/serve runs;
WEB_WORKERS from the environment, default 2) on the benchmark project (benchmarks/gateway.py),
warms it, then runs wrk against `/gw/bench/hello` (or `/gw/bench/slow/hello` with --slow) while
`py-spy record --subprocesses --gil` samples every server process (the thread holding the GIL:
where the CPU goes, not where a coroutine waits). Writes the collapsed stacks and a
"top" table of the functions with the most self and total samples (collapsed stacks), and prints
wrk's req/s and p99 next to it. Run by hand, not in CI; needs wrk and py-spy
(`pip install py-spy`). py-spy slows the sampled processes a little: compare figures of runs
that were all sampled, or run benchmarks/gateway_concurrency.py for throughput.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway import (  # noqa: E402
    PY,
    ROOT,
    VAR,
    Contender,
    free_port,
    prepare_project,
    run_wrk,
    stop_processes,
    wait_http,
    warm,
)
from benchmarks.gateway_concurrency import UPSTREAM, raise_open_files_limit  # noqa: E402


def top_table(collapsed: Path, limit: int) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [frame for frame in stack.split(";") if frame]
        frames = frames[1:] if frames and frames[0].startswith("process ") else frames
        if not frames:
            continue
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    rows = [f"{total} samples", "", "self %  function"]
    rows += [f"{100 * n / total:5.1f}  {name}" for name, n in own.most_common(limit)]
    rows += ["", "total %  function"]
    rows += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(limit)]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow", action="store_true", help="the upstream answers after 100 ms")
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--out", default=str(VAR / "profile"))
    args = parser.parse_args()
    for tool in ("wrk", "py-spy"):
        if not shutil.which(tool) and not (Path(PY).parent / tool).exists():
            raise SystemExit(f"{tool} is missing (apt-get install -y wrk; pip install py-spy)")
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit(args.connections + 1024)

    upstream_port, gh_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(2):
            processes.append(subprocess.Popen([PY, "-c", UPSTREAM, str(upstream_port)]))
        env = prepare_project(upstream_url)
        from tests.support.servers import server_command

        server = subprocess.Popen(server_command(gh_port), env=env, cwd=ROOT)
        processes.append(server)
        wait_http(f"http://127.0.0.1:{gh_port}/healthz", 60)
        path = "/gw/bench/slow/hello" if args.slow else "/gw/bench/hello"
        contender = Contender("Gatehouse /gw", f"http://127.0.0.1:{gh_port}{path}")
        warm(contender.url, {}, 200)
        run_wrk(contender, 3, args.connections)  # pools and caches warm at this load

        stem = out / ("slow" if args.slow else "fast")
        collapsed = stem.with_suffix(".collapsed.txt")
        sampler = [spy, "record", "--pid", str(server.pid), "--subprocesses", "--rate", str(args.rate),
                   "--duration", str(args.duration + 1), "--gil"]  # fmt: skip
        if args.native:
            sampler.append("--native")
        recorder = subprocess.Popen(
            [*sampler, "--format", "raw", "--output", str(collapsed)], stdout=subprocess.DEVNULL
        )
        time.sleep(1)
        result = run_wrk(contender, args.duration, args.connections)
        recorder.wait(timeout=120)
        print(
            f"wrk -t2 -c{args.connections} -d{args.duration}s {path}: {result.rps:.0f} req/s, "
            f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors} "
            f"(py-spy attached)"
        )
        table = top_table(collapsed, args.top)
        stem.with_suffix(".top.txt").write_text(table + "\n")
        print(table)
        print(f"\ncollapsed stacks (speedscope.app and flamegraph.pl read them): {collapsed}")
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    main()
