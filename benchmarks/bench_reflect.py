"""Teacher throughput: a sequential request loop vs the concurrent OpenAI-compatible teacher.

    python benchmarks/bench_reflect.py [--n 48] [--latency-s 0.2] [--concurrency 1,4,16]

Starts the lab's server (replay backend, fixed added latency per request) on a free loopback port,
sends the same n chat requests (a) one after another with the plain synchronous `openai` client,
(b) through OpenAIModel at each concurrency, and prints requests/s and the speed-up over (a).
With latency-bound requests the speed-up should approach the concurrency (target: >= 0.8 x c up to 16).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(replay: Path, latency_s: float, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reflection_lab.server", "--replay", str(replay),
                             "--latency-s", str(latency_s), "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("server did not start: " + log.read_text()[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48, help="requests per measurement")
    ap.add_argument("--latency-s", type=float, default=0.2)
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()

    from openai import OpenAI

    from reflection_lab.llm import ChatRequest
    from reflection_lab.llm.openai import OpenAIModel

    tmp = Path(tempfile.mkdtemp(prefix="bench-reflect-"))
    replay = tmp / "replay.jsonl"
    rows = [{"sample_id": f"b-{i:03d}", "task": "reflect_response", "text": f"Ok.\n[Better Answer]\nAnswer {i}.\n[End]"}
            for i in range(args.n)]
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc, base = start_server(replay, args.latency_s, tmp / "server.log")
    try:
        teacher = OpenAIModel("replay", base_url=base + "/v1", api_key="sk-bench", send_meta=True)
        reqs = [ChatRequest.make(teacher, [{"role": "user", "content": f"Improve answer {r['sample_id']}."}],
                                 meta={"sample_id": r["sample_id"], "task": r["task"]}) for r in rows]
        teacher.complete(reqs[:2], concurrency=2)  # warm-up: imports, first connection

        client = OpenAI(base_url=base + "/v1", api_key="sk-bench", max_retries=0)
        t0 = time.perf_counter()
        for r in reqs:
            client.chat.completions.create(model="replay", messages=list(r.messages), max_tokens=r.max_tokens,
                                           metadata={k: str(v) for k, v in r.meta.items()})
        seq = time.perf_counter() - t0
        seq_rps = args.n / seq
        print(f"server latency {args.latency_s * 1000:.0f} ms/request, {args.n} requests per run "
              f"(ideal sequential: {args.n * args.latency_s:.1f} s)")
        print(f"{'mode':24s} {'seconds':>8s} {'req/s':>8s} {'speed-up':>9s} {'target':>7s}")
        print(f"{'sequential loop':24s} {seq:8.2f} {seq_rps:8.2f} {1.0:9.2f} {'':>7s}")
        for c in [int(x) for x in args.concurrency.split(",")]:
            t0 = time.perf_counter()
            out = teacher.complete(reqs, concurrency=c)
            dt = time.perf_counter() - t0
            bad = sum(not r.ok for r in out)
            speed = (args.n / dt) / seq_rps
            flag = "ok" if speed >= 0.8 * c else "MISS"
            print(f"{'concurrent c=' + str(c):24s} {dt:8.2f} {args.n / dt:8.2f} {speed:9.2f} "
                  f"{0.8 * c:6.1f}{'' if not bad else f'  ({bad} errors)'} {flag}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
