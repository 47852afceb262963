"""The GIL is released while Rust works, and a forked child can use larder."""

import multiprocessing
import os
import threading
import time

import larder
from conftest import write_png


def _count_while(work):
    """Runs ``work`` while another Python thread counts; returns (count during work, seconds)."""
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    before = count[0]
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    during = count[0] - before
    stop.set()
    t.join()
    return during, seconds


def test_prepare_releases_the_gil(tmp_path):
    images = tmp_path / "big"
    images.mkdir()
    for i in range(24):
        write_png(str(images / f"{i}.png"), 768, 512, i)
    during, seconds = _count_while(lambda: larder.prepare(images, tmp_path / "store"))
    assert seconds > 0.05, "the work must take long enough to measure"
    # With the GIL held for the whole call the other thread could not count at all.
    assert during > 1000, f"the other thread counted {during} in {seconds:.3f}s"


def test_waiting_for_a_batch_releases_the_gil(store_path):
    loader = larder.DataLoader(store_path, batch_size=1, num_threads=1, prefetch=1)
    during, _ = _count_while(lambda: [b for _ in range(20) for b in loader])
    assert during > 1000


def _child(store, queue, parent_loader):
    try:
        # A loader made before the fork must refuse to run here rather than hang.
        try:
            next(iter(parent_loader))
            queue.put("the parent's loader ran in the child")
            return
        except larder.LarderError as e:
            if "fork" not in str(e):
                queue.put(f"unexpected error: {e}")
                return
        # The child makes its own loader and its own thread pool work.
        items = sorted(i for b in larder.DataLoader(store, batch_size=2) for i in b["items"].tolist())
        report = larder.scan(os.path.join(os.path.dirname(store), "config.yaml"))
        queue.put(("ok", items, report.items_total))
    except Exception as e:  # noqa: BLE001 - everything goes back to the parent
        queue.put(f"error: {e!r}")


def test_a_forked_child_can_use_larder(store_path):
    # The parent uses the loader and the scan's thread pool before forking.
    parent_loader = larder.DataLoader(store_path, batch_size=2)
    next(iter(parent_loader))
    larder.scan(os.path.join(os.path.dirname(store_path), "config.yaml"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(store_path, queue, parent_loader))
    child.start()
    child.join(timeout=60)
    assert not child.is_alive(), "the child hung"
    result = queue.get(timeout=5)
    assert result == ("ok", list(range(24)), 24), result
