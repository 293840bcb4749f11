"""The gateway's full auth path against its no-auth path, both measured in ONE run with wrk.

    .venv/bin/python benchmarks/gateway_auth.py [--duration 10] [--connections 32] [--rounds 3]

Full auth path: a valid RS256 token (no `permissions` claim, so permissions come from the RBAC
resolver), JWKS and RBAC answers cached after warm-up, `required_permission` checked, revocation
checked, identity headers set, then the same proxy hop as the no-auth route. Target: full / no-auth
>= 0.8. `AuthBench` (token service + RBAC resolver on 127.0.0.1, route file, token) is also used by
benchmarks/gateway.py for its "gateway full auth path" contender.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

ISSUER = "https://tokens.bench.invalid"
AUDIENCE = "gatehouse"
PERMISSION = "bench.read"


class AuthBench:
    """A token service (JWKS) and an RBAC resolver on 127.0.0.1, and what the project needs to use them."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"bench-{uuid.uuid4().hex[:8]}"
        jwk = {
            **RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True),
            "kid": self.kid,
            "alg": "RS256",
        }
        jwks_body = json.dumps({"keys": [jwk]}).encode()
        self.jwks_fetches = 0
        self.rbac_calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if url.path == "/jwks":
                    outer.jwks_fetches += 1
                    body = jwks_body
                elif url.path == "/permissions":
                    outer.rbac_calls += 1
                    query = parse_qs(url.query)
                    granted = [PERMISSION] if query.get("user_id") == ["bench-user"] else []
                    body = json.dumps({"permissions": granted}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        return {
            "JWT_JWKS_URL": f"{self.url}/jwks",
            "JWT_ISSUER": ISSUER,
            "JWT_AUDIENCE": AUDIENCE,
            "RBAC_RESOLVER_URL": f"{self.url}/permissions",
        }

    def route_file(self, directory: Path, *, upstream_url: str, service: str = "bench-upstream") -> Path:
        """A load_routes file adding GET /bench-auth/** (auth, permission) to `service`."""
        path = directory / "routes-auth.json"
        path.write_text(
            json.dumps(
                {
                    "services": [{"name": service, "targets": [upstream_url]}],
                    "routes": [
                        {
                            "method": "GET",
                            "path": "/bench-auth/**",
                            "backend": service,
                            "auth_required": True,
                            "x-required-permission": PERMISSION,
                        }
                    ],
                }
            )
        )
        return path

    def prepare(self, env: dict[str, str], *, upstream_url: str, directory: Path) -> dict[str, str]:
        """Load the auth route into the benchmark project; returns `env` pointed at these servers."""
        env = {**env, **self.env()}
        routes = self.route_file(directory, upstream_url=upstream_url)
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "load_routes", str(routes)],
            env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return env

    def headers(self) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench-user",
            "tenant_id": "bench-tenant",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        token = jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})
        return {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    from benchmarks import gateway as bench  # the shared machinery: upstream, project, wrk

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="each contender is measured this often")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    bench.VAR.mkdir(parents=True, exist_ok=True)
    auth = AuthBench()
    processes: list[subprocess.Popen] = []
    try:
        upstream_port = bench.free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        processes.append(subprocess.Popen([bench.PY, "-c", bench.ASYNC_UPSTREAM, str(upstream_port)]))
        bench.wait_http(f"{upstream}/hello")
        env = auth.prepare(bench.prepare_project(upstream), upstream_url=upstream, directory=bench.VAR)
        port = bench.free_port()
        processes.append(subprocess.Popen(bench.server_commands(port)["asgi"], env=env, cwd=ROOT))
        base = f"http://127.0.0.1:{port}"
        bench.wait_http(f"{base}/healthz")
        contenders = [
            bench.Contender("gateway, no auth", f"{base}/gw/bench/hello"),
            bench.Contender("gateway, full auth path", f"{base}/gw/bench-auth/hello", auth.headers()),
        ]
        for contender in contenders:
            bench.warm(contender.url, contender.headers)
        fetches_after_warm, rbac_after_warm = auth.jwks_fetches, auth.rbac_calls
        for round_number in range(args.rounds):  # interleaved: background load hits both alike
            for contender in contenders:
                result = bench.run_wrk(contender, args.duration, args.connections)
                contender.results.append(result)
                print(f"round {round_number + 1}: {contender.name:28} {result.rps:9.0f} req/s", flush=True)
        redis = "yes" if env.get("REDIS_URL") else "no (local memory)"
        print(
            f"\nwrk -t2 -c{args.connections} -d{args.duration}s, best of {args.rounds} interleaved rounds, "
            f"python -m config.server (production command line), Redis: {redis}"
        )
        print(f"{'contender':30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   rounds")
        for contender in contenders:
            best = contender.best()
            rounds = ", ".join(f"{r.rps:.0f}" for r in contender.results)
            figures = f"{best.rps:9.0f} {best.p50_ms:8.2f} {best.p99_ms:8.2f} {best.errors:7d}"
            print(f"{contender.name:30} {figures}   {rounds}")
        ratio = contenders[1].best().rps / contenders[0].best().rps
        print(f"\nfull auth path / no auth = {ratio:.2f}   (target >= 0.80)")
        fetches, calls = auth.jwks_fetches - fetches_after_warm, auth.rbac_calls - rbac_after_warm
        print(
            f"token service during the measured rounds: {fetches} JWKS fetches, {calls} RBAC resolver calls"
        )
    finally:
        for process in reversed(processes):  # the gateway before its upstream
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        auth.close()


if __name__ == "__main__":
    main()
