"""Load on the session's tiny server (``conftest.server``): 20 concurrent requests all complete through
the queue; the server stays up and its memory does not keep growing from one wave to the next."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from app_harness import editor, gallery
from gradio_client import handle_file

from vision.ui import memory

WAVE = 20


def _files(value) -> list[str]:
    """Every downloaded file in a result (gradio_client returns local paths inside dicts and lists)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _files(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _files(v)]
    is_file = isinstance(value, str) and len(value) < 4096 and "\n" not in value and Path(value).is_file()
    return [value] if is_file else []


def _trident_job(client, image):
    return client.submit(handle_file(image), "cup; saucer; background", "open", 0.0, True, "clip_b16",
                         api_name="/trident")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to read the server's memory")
def test_load_20_concurrent_requests_queue_complete_and_memory_stays_bounded(client, server, photos):
    from gradio_client.utils import Status

    def wave() -> int:
        jobs = []
        for i in range(WAVE):  # trident and ipseg interleaved, all submitted at once
            if i % 2:
                jobs.append(_trident_job(client, photos["coffee"]))
            else:
                jobs.append(client.submit(editor(photos["chelsea"]), gallery(photos["coffee"]), "mask", True, 1,
                                          0.0, "sam_b", api_name="/ipseg"))
        deepest = 0
        while not all(job.done() for job in jobs):
            deepest = max([deepest] + [job.status().rank or 0 for job in jobs
                                       if job.status().code == Status.IN_QUEUE])
            time.sleep(0.2)
        results = [job.result(timeout=300) for job in jobs]
        assert all(r[0]["annotations"] for r in results)  # every request answered with masks/labels
        # identical requests give identical outputs: every file each client downloaded is whole (Gradio's
        # cache rewrote a shared file in place, and a client got 0 bytes; vision.ui.storage)
        downloads = [path for r in results for path in _files(r)]
        assert len(downloads) >= 4 * WAVE
        assert all(Path(path).stat().st_size > 0 for path in downloads), "a downloaded output was empty"
        return deepest

    deepest = wave()
    assert deepest >= 1, "with a concurrency limit of 1, 20 simultaneous requests must wait in the queue"
    first = memory.process_rss_mb(server.process.pid)
    wave()
    second = memory.process_rss_mb(server.process.pid)
    assert server.alive()
    assert second - first < 100, f"server memory grew from {first:.0f} to {second:.0f} MiB over {WAVE} requests"
    *_, table, _ = _trident_job(client, photos["astronaut"]).result(timeout=120)  # and it still answers
    assert len(table["data"]) == 3
