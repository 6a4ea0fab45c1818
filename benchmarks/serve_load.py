"""Load on `ifedit serve`: edits per second, latency and the share refused, with 1 and 2 Ray Serve CPU replicas.

    python benchmarks/serve_load.py                          # the toy world, about 2 minutes on 2 cores
    python benchmarks/serve_load.py --concurrency 1,4 --requests 6

Each setup is a real server on a free loopback port with the toy world's model in Ray Serve replicas on a Ray
cluster of this machine's cores (split between the replicas). At each concurrency, that many async clients send
`--requests` edits in all, each client one at a time; a request refused with 429 counts as rejected and is not
retried: its client waits the Retry-After the server gave and sends its next one. Latency is over the accepted
edits. The ratio column divides the 2-replica throughput by the 1-replica throughput at the same concurrency,
measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import time

import httpx
import PIL.Image
import ray
from ray import serve

from ifedit.cli import build_parser
from ifedit.serve.app import bind, serving
from ifedit.serve.command import build_service
from ifedit.toyworld.scenes import render_frame, sample_case

REPLICAS = (1, 2)


def scene_png(seed: int = 1_000_003) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(render_frame(sample_case(seed), 0.0)).save(buffer, format="PNG")
    return buffer.getvalue()


async def load(url: str, image: bytes, concurrency: int, requests: int) -> dict:
    """Send `requests` edits from `concurrency` clients; statuses, latencies of the accepted ones, wall seconds."""
    remaining = iter(range(requests))
    statuses: list[int] = []
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        for index in remaining:
            start = time.perf_counter()
            answer = await http.post(
                url + "/v1/images/edits",
                files={"image": ("scene.png", image, "image/png")},
                data={"prompt": "slide the red square left", "seed": str(index)},
            )
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif answer.status_code == 429:  # a polite client waits as long as the server asks
                await asyncio.sleep(float(answer.headers["retry-after"]))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return {"statuses": statuses, "latencies": latencies, "seconds": time.perf_counter() - start}


def measure(replicas: int, options: argparse.Namespace, image: bytes) -> dict[int, dict]:
    """One server with `replicas` replicas, warmed up, then every concurrency level in turn."""
    argv = [
        "serve", "--model", "toyworld", "--replicas", str(replicas), "--queue-size", str(options.queue_size),
        "--steps", str(options.steps), "--frames", str(options.frames), "--prompt-enhancer", "template",
    ]  # fmt: skip
    service = build_service(build_parser().parse_args(argv))
    results = {}
    with serving(service, bind("127.0.0.1", 0)) as url:
        asyncio.run(load(url, image, replicas, 2 * replicas))  # first edits on each replica pay for warm-up
        for concurrency in options.concurrency:
            results[concurrency] = asyncio.run(load(url, image, concurrency, options.requests))
            print(f"  {replicas} replica(s), {concurrency} clients: {_summary(results[concurrency])}", flush=True)
    return results


def _summary(result: dict) -> str:
    ok = result["statuses"].count(200)
    return f"{ok}/{len(result['statuses'])} accepted in {result['seconds']:.1f} s"


def _percentile(values: list[float], fraction: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def table(results: dict[int, dict[int, dict]], concurrency: list[int]) -> str:
    rows = [
        "| replicas | clients | accepted | rejected | edits/s | p50 s | p95 s | edits/s vs 1 replica |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for replicas, levels in results.items():
        for clients in concurrency:
            result = levels[clients]
            statuses, latencies = result["statuses"], result["latencies"]
            others = set(statuses) - {200, 429}
            assert not others, f"statuses other than 200 and 429: {sorted(others)}"
            throughput = len(latencies) / result["seconds"]
            base = results[REPLICAS[0]][clients]
            ratio = throughput / (len(base["latencies"]) / base["seconds"])
            p50 = _percentile(latencies, 0.5) if latencies else float("nan")
            p95 = _percentile(latencies, 0.95) if latencies else float("nan")
            rejected = statuses.count(429) / len(statuses)
            rows.append(
                f"| {replicas} | {clients} | {len(latencies)}/{len(statuses)} | {rejected:.0%} | {throughput:.2f} "
                f"| {p50:.1f} | {p95:.1f} | {ratio:.2f}x |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,2,4", help="client counts, comma-separated (default: 1,2,4)")
    parser.add_argument("--requests", type=int, default=12, help="edits sent at each concurrency (default: 12)")
    parser.add_argument("--queue-size", type=int, default=1, help="the server's --queue-size (default: 1)")
    # The toyworld preset's own; with 4 steps and 9 frames an edit is short enough that the serving overhead
    # shared by the replicas on two cores decides the rate, and 2 replicas measured 0.98x of one.
    parser.add_argument("--steps", type=int, default=12, help="denoising steps per edit (default: 12)")
    parser.add_argument("--frames", type=int, default=17, help="frames per edit clip (default: 17)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray cluster cores (default: all)")
    options = parser.parse_args()
    options.concurrency = [int(value) for value in options.concurrency.split(",")]
    image = scene_png()
    ray.init(num_cpus=options.cpus, include_dashboard=False, log_to_driver=False)
    try:
        results = {}
        for replicas in REPLICAS:
            results[replicas] = measure(replicas, options, image)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(
        f"\ntoy world, {options.steps} steps, {options.frames} frames, 64x64 px; {options.cpus} cores shared by the "
        f"replicas; --queue-size {options.queue_size}; {options.requests} requests per row\n"
    )
    print(table(results, options.concurrency))


if __name__ == "__main__":
    main()
