"""The dashboard's costs with a 100,000-task batch in Redis (issue 25): prints its figures.

    python benchmarks/dashboard_bench.py                 # 100,000 tasks
    python benchmarks/dashboard_bench.py --tasks 20000 --requests 100
    python benchmarks/dashboard_bench.py --workers 3   # a finished batch: run it first

On an embedded stack (Tansu and Redis), a map of ``--tasks`` tasks is written with no
worker running (so they stay queued and Redis holds them all), or with ``--workers N``
run to its end by N workers that then stop; then ``yadtq dashboard`` runs as its own
process and is measured, with no worker running:

- first paint of the overview and of the batch's first and last pages in headless
  chromium (Playwright, the browser's ``first-contentful-paint`` entry);
- API latency, p50 and p95 over ``--requests`` requests each of ``api/overview`` and
  ``api/batch/<id>?page=<random>``;
- Redis commands a second while one page is open and its live stream runs, from
  ``INFO stats`` ``total_commands_processed`` (minus the rate with no page open).

Targets: first paint < 1.5 s, API p95 < 200 ms, at most 20 Redis commands a second a page.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout as-is

from worker_node.tasks import add  # noqa: E402
from yadtq import Client  # noqa: E402
from yadtq.config import Config  # noqa: E402
from yadtq.dashboard.reads import PAGE_SIZE  # noqa: E402
from yadtq.local import LocalCluster, LocalStack, free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
FIRST_PAINT_JS = """() => new Promise((done) => {
  const found = () => performance.getEntriesByName('first-contentful-paint')[0];
  const wait = () => found() ? done(found().startTime) : requestAnimationFrame(wait);
  wait();
})"""


def start_dashboard(config: Config, port: int) -> subprocess.Popen[bytes]:
    """``yadtq dashboard`` as a child process, once it answers."""
    process = subprocess.Popen([sys.executable, "-m", "yadtq", "dashboard", "--port",
                                str(port)], env={**os.environ, **config.to_environment()})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=2)
            return process
        except OSError:
            time.sleep(0.1)  # a benchmark's startup poll, not a test's synchronisation
    process.kill()
    raise SystemExit("the dashboard did not answer within 30 s")


def first_paints(base: str, pages: dict[str, str]) -> dict[str, float]:
    """Milliseconds to first contentful paint of each page, each in a fresh tab."""
    from playwright.sync_api import sync_playwright

    found = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            for name, path in pages.items():
                page = browser.new_page()
                page.goto(base + path, wait_until="commit")
                found[name] = page.evaluate(FIRST_PAINT_JS)
                page.close()
        finally:
            browser.close()
    return found


def latencies(base: str, paths: list[str]) -> tuple[float, float]:
    """p50 and p95 of GETting each path, in milliseconds."""
    took = []
    for path in paths:
        started = time.perf_counter()
        with urllib.request.urlopen(base + path, timeout=10) as reply:
            reply.read()
        took.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(took, n=100)
    return cuts[49], cuts[94]


def commands_per_second(server: redis.Redis, seconds: float) -> float:
    """Redis's commands a second over ``seconds`` (the INFO calls themselves excluded)."""
    before = server.info("stats")["total_commands_processed"]
    time.sleep(seconds)  # the measuring window
    after = server.info("stats")["total_commands_processed"]
    return (after - before - 1) / seconds


def with_page_open(base: str, path: str, server: redis.Redis, seconds: float) -> float:
    """Redis's commands a second while chromium holds ``path`` open."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base + path)
            time.sleep(2)  # let the live stream settle into its pace
            return commands_per_second(server, seconds)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes that run the batch to its end first")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds each Redis rate is measured over")
    args = parser.parse_args()
    unique = uuid.uuid4().hex[:8]
    with LocalStack() as stack:
        config = Config(bootstrap=stack.bootstrap, redis_url=stack.redis_url,
                        queue=f"dash-{unique}", key_prefix=f"dash-{unique}", source="bench")
        started = time.perf_counter()
        with Client(config) as client:
            cluster = None
            if args.workers:
                cluster = LocalCluster(args.workers, stack=stack, queue=config.queue,
                                       key_prefix=config.key_prefix, trust_code=False).start()
                client.wait_for_workers(args.workers)
                started = time.perf_counter()
            batch = client.map(add, [(i, i) for i in range(args.tasks)])
            if cluster is not None:
                batch.wait()
                cluster.stop()
        state = "ran" if args.workers else "wrote (queued)"
        print(f"{state} a {args.tasks}-task batch in {time.perf_counter() - started:.1f} s")
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        process = start_dashboard(config, port)
        try:
            last = -(-args.tasks // PAGE_SIZE)
            query = f"?queue={config.queue}"
            paints = first_paints(base, {
                "overview": "", "batch page 1": f"batch/{batch.id}{query}",
                f"batch page {last}": f"batch/{batch.id}{query}&page={last}"})
            for name, ms in paints.items():
                print(f"first paint, {name}: {ms:.0f} ms")
            overview = latencies(base, ["api/overview"] * args.requests)
            pages = latencies(base, [f"api/batch/{batch.id}?page={random.randint(1, last)}"
                                     for _ in range(args.requests)])
            print(f"api/overview over {args.requests}: p50 {overview[0]:.1f} ms, "
                  f"p95 {overview[1]:.1f} ms")
            print(f"api/batch/<id>?page=<random> over {args.requests}: p50 {pages[0]:.1f} ms, "
                  f"p95 {pages[1]:.1f} ms")
            server = redis.Redis.from_url(stack.redis_url)
            idle = commands_per_second(server, args.window)
            print(f"Redis commands/s with no page open: {idle:.1f}")
            for name, path in {"overview": "", "workers": "workers",
                               "batches": "batches",
                               "batch page 1": f"batch/{batch.id}{query}"}.items():
                rate = with_page_open(base, path, server, args.window) - idle
                print(f"Redis commands/s with the {name} open: {rate:.1f}")
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
