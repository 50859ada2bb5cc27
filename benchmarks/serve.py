"""`edge-infer serve` under load: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients posting single
28x28 PNGs (real MNIST test digits), with and without dynamic batching, beside in-process predict_batch
throughput on the same PNGs; peak RSS after 10,000 mixed good and bad requests vs after 100; cold start of
the server to its first answer.

    python benchmarks/serve.py [--data-dir ../shared/data] [--quick] [--requests 3000]

Each configuration is a fresh server (`python -m edge_infer serve --port 0`, as tests/serving.py starts it).
The clients are asyncio tasks in this process on keep-alive HTTP/1.1 connections (a few lines of raw
protocol: an HTTP library would cost more CPU than the server), so on a small machine they share its cores
with the server, as a local client would. Latency is from sending a request to reading its whole answer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import add_common_args, machine_header, median, mib, section, table, target, timed
from PIL import Image

from edge_infer import Classifier
from tests.conftest import read_idx
from tests.serving import ServerProcess, call, multipart

CLIENTS = (1, 8, 32)
REQUESTS = 3000  # per configuration; --quick: 600
RSS_EARLY, RSS_LATE = 100, 10_000  # requests (--quick: 100 and 2,000)
COLD_STARTS = 5  # --quick: 3
ROUNDS = 3  # turns of the two servers per client count
# targets (issue 20)
THROUGHPUT_SHARE, P99_S, BATCHING_GAIN, RSS_GROWTH, COLD_START_S = 0.6, 0.050, 2.0, 20 * 2**20, 1.5


def mnist_pngs(data_dir: Path, count: int) -> list[bytes]:
    images, _ = read_idx(data_dir / "MNIST" / "raw", "t10k")
    out = []
    for image in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def request_bytes(body: bytes, path: str = "/v1/digits", content_type: str = "image/png") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _client(port: int, requests: list[bytes], latencies: list[float], statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses.append(int(head.split(b" ", 2)[1]))
            if b"connection: close" in head.lower():  # (the server closes after some errors)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


def load(port: int, requests: list[bytes], clients: int) -> tuple[float, list[float], list[int]]:
    """Send the requests from `clients` concurrent connections: (seconds, latencies, statuses)."""
    latencies: list[float] = []
    statuses: list[int] = []

    async def everyone() -> None:
        share = [requests[i::clients] for i in range(clients)]
        await asyncio.gather(*(_client(port, mine, latencies, statuses) for mine in share))

    start = time.perf_counter()
    asyncio.run(everyone())
    return time.perf_counter() - start, latencies, statuses


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def in_process(pngs: list[bytes]) -> float:
    """predict_batch images/s on the same PNGs, batches of 256 (decoding included), one thread as the server."""
    classifier = Classifier(threads=1)
    batches = [pngs[i : i + 256] for i in range(0, len(pngs), 256)]
    samples = timed({"batch": lambda: [classifier.predict_batch(batch) for batch in batches]}, reps=5, rounds=5)
    return len(pngs) / median(samples["batch"])


def throughput(pngs: list[bytes], requests: int) -> tuple[str, dict[tuple[bool, int], tuple[float, float, float]]]:
    """{(batching, clients): (requests/s, p50 s, p99 s)} and a table; every answer must be 200. The two servers
    run side by side and take turns, ROUNDS times per client count, so that a shared machine's slow moments
    hit both alike."""
    bodies = [request_bytes(pngs[i % len(pngs)]) for i in range(requests)]
    rounds = [bodies[i::ROUNDS] for i in range(ROUNDS)]
    results: dict[tuple[bool, int], tuple[float, float, float]] = {}
    rows = []
    with ServerProcess() as batching_server, ServerProcess(["--no-batching"]) as plain_server:
        servers = {True: batching_server, False: plain_server}
        for server in servers.values():
            load(server.port, bodies[:200], 8)  # warm-up
        before = call(batching_server.port, "GET", "/v1/model").json["batching"]
        for clients in CLIENTS:
            seconds = {True: 0.0, False: 0.0}
            latencies: dict[bool, list[float]] = {True: [], False: []}
            for share in rounds:
                for batching, server in servers.items():
                    took, times, statuses = load(server.port, share, clients)
                    bad = [s for s in statuses if s != 200]
                    if bad:
                        raise RuntimeError(f"{len(bad)} answers were not 200: {sorted(set(bad))}")
                    seconds[batching] += took
                    latencies[batching] += times
            for batching in servers:
                p50, p99 = percentile(latencies[batching], 50), percentile(latencies[batching], 99)
                results[(batching, clients)] = (requests / seconds[batching], p50, p99)
        after = call(batching_server.port, "GET", "/v1/model").json["batching"]
    for batching in (True, False):
        for clients in CLIENTS:
            rps, p50, p99 = results[(batching, clients)]
            name = "dynamic batching" if batching else "one run per request"
            rows.append([name, clients, f"{rps:.0f}", f"{p50 * 1e3:.1f}", f"{p99 * 1e3:.1f}"])
    runs, images = after["runs"] - before["runs"], after["images"] - before["images"]
    text = table(["server", "clients", "requests/s", "p50 ms", "p99 ms"], rows) + (
        f"\nWith batching, {images / max(runs, 1):.2f} images per session.run on average over all client counts "
        f"(largest run: {after['largest']} images).\n"
    )
    return text, results


def mixed_requests(pngs: list[bytes], count: int) -> list[bytes]:
    """Good and bad requests in turn: PNGs, junk bytes, truncated PNGs, a wrong type, multipart with an error,
    a number, a bad query."""
    good = pngs[0]
    body, headers = multipart([("a.png", good), ("b.png", b"junk"), ("c.png", pngs[1])])
    kinds = [
        lambda i: request_bytes(pngs[i % len(pngs)]),
        lambda i: request_bytes(b"not an image %d" % i),
        lambda i: request_bytes(pngs[i % len(pngs)][:40]),
        lambda i: request_bytes(b'{"x": 1}', content_type="application/json"),
        lambda i: request_bytes(body, content_type=headers["Content-Type"]),
        lambda i: request_bytes(pngs[i % len(pngs)], path="/v1/numbers?input=1"),
        lambda i: request_bytes(good, path="/v1/digits?top_k=99"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def rss(pid: int) -> tuple[int, int]:
    """(current, peak) resident memory of a process, bytes (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def memory(pngs: list[bytes], early: int, late: int) -> tuple[str, int]:
    requests = mixed_requests(pngs, late)
    with ServerProcess() as server:
        assert server.process is not None
        load(server.port, requests[:early], 8)
        first = rss(server.process.pid)
        load(server.port, requests[early:], 8)
        last = rss(server.process.pid)
    rows = [
        [f"after {early:,} requests", mib(first[0]), mib(first[1])],
        [f"after {late:,} requests", mib(last[0]), mib(last[1])],
    ]
    text = table(["server (8 clients, mixed good and bad requests)", "RSS", "peak RSS"], rows)
    return text, last[1] - first[1]


def cold_start(pngs: list[bytes], runs: int) -> tuple[str, float]:
    """Spawn `python -m edge_infer serve` to its first answer to POST /v1/digits, seconds (median of runs)."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        server = ServerProcess().start()
        reply = call(server.port, "POST", "/v1/digits", pngs[0])
        seconds.append(time.perf_counter() - start)
        assert reply.status == 200, reply.body
        server.stop()
    text = f"Spawn to first answer: median {median(seconds):.2f} s, best {min(seconds):.2f} s ({runs} runs).\n"
    return text, median(seconds)


def run(data_dir: Path, quick: bool, requests: int | None = None) -> str:
    requests = requests or (REQUESTS // 5 if quick else REQUESTS)
    pngs = mnist_pngs(data_dir, 1000)
    print("serve: in-process", file=sys.stderr, flush=True)
    local = in_process(pngs)
    print("serve: throughput", file=sys.stderr, flush=True)
    speed, results = throughput(pngs, requests)
    print("serve: memory", file=sys.stderr, flush=True)
    late = RSS_LATE // 5 if quick else RSS_LATE
    rss_text, growth = memory(pngs, RSS_EARLY, late)
    print("serve: cold start", file=sys.stderr, flush=True)
    cold_text, cold = cold_start(pngs, 3 if quick else COLD_STARTS)
    rps32, _, p99 = results[(True, 32)]
    gain = rps32 / results[(False, 32)][0]
    checks = (
        target(
            f"32 clients >= {THROUGHPUT_SHARE:.0%} of in-process predict_batch ({local:.0f} images/s)",
            f"{rps32:.0f} requests/s = {rps32 / local:.0%}",
            rps32 >= THROUGHPUT_SHARE * local,
        )
        + target(f"32 clients p99 <= {P99_S * 1e3:.0f} ms", f"{p99 * 1e3:.1f} ms", p99 <= P99_S)
        + target(
            f"dynamic batching >= {BATCHING_GAIN:.0f}x one run per request (32 clients)",
            f"{gain:.2f}x",
            gain >= BATCHING_GAIN,
        )
        + target(
            f"RSS growth from {RSS_EARLY:,} to {late:,} requests <= {mib(RSS_GROWTH)}",
            f"{mib(growth)} (peak RSS)",
            growth <= RSS_GROWTH,
        )
        + target(f"cold start to the first answer <= {COLD_START_S} s", f"{cold:.2f} s", cold <= COLD_START_S)
    )
    about = (
        f"{requests:,} requests per row, each one 28x28 MNIST test PNG as the raw body of POST /v1/digits; "
        f"in-process predict_batch on the same PNGs (batches of 256, decoding included, one thread): "
        f"{local:.0f} images/s. The clients run in the benchmark's process on the same cores as the server."
    )
    return section("7. Serve (`edge-infer serve`)", about, speed, rss_text, cold_text, checks)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--requests", type=int, default=None, help=f"per configuration (default {REQUESTS})")
    args = parser.parse_args()
    header = machine_header("edge-infer serve benchmark", args.quick)
    print(header + "\n" + run(args.data_dir, args.quick, args.requests))


if __name__ == "__main__":
    main()
