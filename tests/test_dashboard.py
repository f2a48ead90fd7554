"""The dashboard's routes, auth and actions (issue 25), against the real Redis and workers.

Starlette's TestClient drives the app in this process; the tasks are real, run by
real worker processes, and every figure checked is compared with what Redis says.
"""

from __future__ import annotations

import html
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest
from helpers import wait_until
from starlette.testclient import TestClient

from worker_node.tasks import add, divide
from yadtq.cli import main
from yadtq.config import Config
from yadtq.dashboard import live
from yadtq.dashboard.app import create_app
from yadtq.dashboard.reads import PAGE_SIZE, QueueReads
from yadtq.dashboard.settings import DashboardSettings
from yadtq.errors import BackendUnavailable, ConfigurationError
from yadtq.local import LocalStack

TOKEN = "s3cret-token"


def dashboard(config: Config, **options: object) -> TestClient:
    return TestClient(create_app(DashboardSettings((config,), **options)))  # type: ignore[arg-type]


@pytest.fixture
def web(config: Config) -> Iterator[TestClient]:
    with dashboard(config) as client:
        yield client


def test_pages_show_what_redis_says_of_a_finished_batch_and_its_failed_task(
        config, client, start_workers, web):
    # Given two workers that ran a batch with one failure
    start_workers(2)
    client.wait_for_workers(2)
    batch = client.map(divide, [(6, 3), (1, 0), (9, 3)])
    batch.wait(timeout=60)
    failed = batch[1].id
    stats = client.backend.queue_stats()

    # When the overview's JSON is read
    overview = web.get("/api/overview").json()["queues"][0]

    # Then its counts are the queue's counters and both workers are alive
    assert overview["statuses"]["success"] == stats.statuses["success"] == 2
    assert overview["statuses"]["failed"] == 1 and overview["done"] == 3
    assert overview["alive"] == 2
    assert [b["id"] for b in overview["batches"]] == [batch.id]
    assert overview["batches"][0]["percent"] == 100.0
    page = web.get("/")
    assert page.status_code == 200 and batch.id in page.text
    assert 'href="./batch/' in page.text and 'href="/' not in page.text  # relative links only

    # And the batch page lists its tasks with the failure's error
    rows = web.get(f"/api/batch/{batch.id}").json()
    assert [t["status"] for t in rows["tasks"]] == ["success", "failed", "success"]
    assert rows["tasks"][1]["error"].startswith("ZeroDivisionError")
    assert f'href="../task/{failed}?queue={config.queue}"' in web.get(f"/batch/{batch.id}").text

    # And the failed task's page shows its traceback and its attempt
    task_page = web.get(f"/task/{failed}")
    assert task_page.status_code == 200
    assert "Traceback (most recent call last)" in task_page.text
    assert "ZeroDivisionError" in task_page.text
    attempts = web.get(f"/api/task/{failed}").json()["attempts"]
    assert [a["event"] for a in attempts] == ["claimed", "failed"]

    # And the workers page shows both, with their slots
    workers = web.get("/api/workers").json()["queues"][0]["workers"]
    assert len(workers) == 2 and {w["status"] for w in workers} == {"alive"}
    assert all(w["slots"] > 0 for w in workers)

    # And /metrics serves the queue-wide metrics with the same counts
    scraped = web.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert (f'yadtq_task_outcomes_total{{queue="{config.queue}",status="failed",task="divide"}}'
            " 1.0") in scraped.text
    assert f'yadtq_workers_alive{{queue="{config.queue}"}} 2.0' in scraped.text


def test_a_batch_page_reads_one_page_of_its_tasks(client, web):
    # Given a batch of 120 tasks no worker runs (they stay queued)
    batch = client.map(add, [(i, i) for i in range(120)])

    # When its third page is read
    found = web.get(f"/api/batch/{batch.id}?page=3").json()

    # Then it holds the last 20 tasks, in order, of 3 pages
    assert found["pages"] == 3 and found["listed"] == 120 and found["queued"] == 120
    assert [t["index"] for t in found["tasks"]] == [str(i) for i in range(2 * PAGE_SIZE, 120)]
    assert [t["id"] for t in found["tasks"]] == [f.id for f in batch[2 * PAGE_SIZE:]]
    assert web.get(f"/batch/{batch.id}?page=2").text.count('data-task="') == PAGE_SIZE


def test_unknown_ids_and_bad_pages_get_a_page_that_says_so(web, config):
    page = web.get("/batch/no-such-batch")
    assert page.status_code == 404 and "no batch 'no-such-batch'" in html.unescape(page.text)
    assert web.get("/task/nope").status_code == 404
    assert "no task 'nope'" in web.get("/api/task/nope").json()["error"]
    assert web.get("/workflow/nope").status_code == 404
    assert web.get("/live/batch/nope").status_code == 404
    assert web.get("/batch/x?page=zero").status_code == 400
    assert "does not serve queue 'other'" in html.unescape(web.get("/task/x?queue=other").text)


def test_with_a_token_every_request_without_it_gets_401(config):
    with dashboard(config, token=TOKEN) as web:
        # Without it, or with a wrong one: 401
        assert web.get("/").status_code == 401
        assert web.get("/api/overview").status_code == 401
        assert web.get("/metrics").status_code == 401
        assert web.get("/api/overview",
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
        # With the bearer header: the page
        assert web.get("/api/overview",
                       headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # With ?token= once: a cookie, and the same page without the token in its address
        first = web.get(f"/workers?token={TOKEN}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "./workers"
        assert "httponly" in first.headers["set-cookie"].lower()
        assert web.get("/api/workers").status_code == 200  # the cookie carries it now


def test_an_address_other_than_loopback_without_a_token_is_refused_at_startup(
        stack: LocalStack, capsys):
    with pytest.raises(ConfigurationError, match="without a token"):
        DashboardSettings((Config(bootstrap="x:1", redis_url="redis://x"),), host="0.0.0.0")

    status = main(["dashboard", "--host", "0.0.0.0", "--bootstrap", stack.bootstrap,
                   "--redis", stack.redis_url])

    assert status == 1
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in \
        capsys.readouterr().err


def test_actions_are_403_unless_allowed(client, web):
    future = client.submit(add, 1, 2)  # no worker: stays queued

    refused = web.post(f"/task/{future.id}/cancel")

    assert refused.status_code == 403 and "--allow-actions" in refused.text
    assert web.post("/workflow/x/retry").status_code == 403
    assert client.status(future.id) == "queued"
    assert "Cancel this task" not in web.get(f"/task/{future.id}").text


def test_allowed_actions_cancel_through_the_client_and_refuse_other_sites(config, client):
    future = client.submit(add, 1, 2)
    batch = client.map(add, [(1, 1), (2, 2)])
    with dashboard(config, allow_actions=True) as web:
        assert "Cancel this task" in web.get(f"/task/{future.id}").text

        cross_site = web.post(f"/task/{future.id}/cancel",
                              headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403 and client.status(future.id) == "queued"

        done = web.post(f"/task/{future.id}/cancel", follow_redirects=False)
        assert done.status_code == 303
        assert done.headers["location"].startswith(f"../{future.id}?queue=")
        assert client.status(future.id) == "cancelled"

        web.post(f"/batch/{batch.id}/cancel")
        wait_until(lambda: client.backend.batch_counts(batch.id)["cancelled"] == 2, 10,
                   "the batch's two tasks cancelled")

        with client.workflow("etl") as workflow:
            parent = client.submit(add, 1, 2)
            child = client.submit(add, parent, 1)
        cancelled = web.post(f"/workflow/{workflow.id}/cancel")
        assert cancelled.status_code == 200
        assert f"cancelled 1 task of workflow {workflow.id}" in cancelled.text
        assert client.status(parent.id) == "cancelled"
        assert client.status(child.id) in ("cancelled", "skipped")
        retried = web.post(f"/workflow/{workflow.id}/retry")
        assert retried.status_code == 200 and "will run again" in retried.text


def test_without_the_extra_the_command_names_the_install():
    code = ("import sys; sys.modules['starlette'] = None; from yadtq.cli import main; "
            "sys.exit(main(['dashboard', '--bootstrap', 'x:1', '--redis', 'redis://x:1']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 1
    assert "pip install 'yadtq[dashboard]'" in result.stderr


def test_the_live_stream_sends_a_page_when_it_changed_and_says_when_redis_is_away(
        monkeypatch):
    # Given a page whose reads give the same figures twice, then new ones, then an error
    monkeypatch.setattr(live, "INTERVAL", 0.01)
    reads = iter([{"done": 1}, {"done": 1}, {"done": 2}, BackendUnavailable("Redis away")])

    def read() -> tuple[dict[str, int], int]:
        found = next(reads)
        if isinstance(found, Exception):
            raise found
        return found, 3

    class OpenFor:  # a browser that stays for four reads
        def __init__(self) -> None:
            self.asked = 0

        async def is_disconnected(self) -> bool:
            self.asked += 1
            return self.asked > 4

    async def collect() -> list[str]:
        return [event async for event in live._updates(OpenFor(), read)]

    # When its stream runs
    events = anyio.run(collect)

    # Then each change went out once, and the error as a problem event
    assert events == ['event: message\ndata: {"done": 1}\n\n',
                      'event: message\ndata: {"done": 2}\n\n',
                      'event: problem\ndata: {"problem": "Redis away"}\n\n']


def test_a_batch_page_read_again_rereads_only_its_unfinished_rows(client, backend):
    # Given the first page of a batch read once, then one of its tasks cancelled
    batch = client.map(add, [(i, i) for i in range(PAGE_SIZE + 10)])
    first = QueueReads(backend).batch(batch.id, 1)
    client.cancel(batch[0].id, batch.id)

    # When it is read again, as its live stream does
    reads = QueueReads(backend)
    again = reads.again(first)

    # Then the counts and the cancelled row are new, at one command a row and the counters
    assert again["cancelled"] == 1 and again["queued"] == PAGE_SIZE + 9
    assert again["tasks"][0]["status"] == "cancelled"
    assert reads.commands == 1 + PAGE_SIZE

    # And while no task moves, only the counters are read
    reads = QueueReads(backend)
    assert reads.again(again) == again and reads.commands == 1

    # And once a row is final, it is no longer read
    client.cancel(batch[1].id, batch.id)
    reads = QueueReads(backend)
    assert reads.again(again)["tasks"][1]["status"] == "cancelled"
    assert reads.commands == 1 + PAGE_SIZE - 1
