"""Stores in object storage from Python: prepare into s3://, DataLoader over the URL, push and
pull, against the S3 server scripts/test starts (endpoint and credentials in AWS_*)."""

import os
import signal
import uuid

import pytest

import larder

from conftest import make_dataset


@pytest.fixture
def s3_url():
    base = os.environ.get("LARDER_TEST_S3_URL")
    if not base:
        pytest.fail(
            "LARDER_TEST_S3_URL and AWS_ENDPOINT_URL must name the test S3 server: run scripts/test, which starts it"
        )
    return f"{base}/pytest/{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LARDER_CACHE_DIR", str(tmp_path / "cache"))


def batches(loader):
    return [(b["items"].tolist(), b["captions"], b["pixels"].tobytes()) for b in loader]


def test_a_data_loader_over_an_s3_url_serves_what_the_local_store_serves(tmp_path, s3_url):
    config = make_dataset(str(tmp_path))
    local = tmp_path / "store"
    larder.prepare(config, local)
    report = larder.prepare(config, s3_url)
    assert report["items"] > 0

    expected = batches(larder.DataLoader(local, batch_size=2, seed=5))
    remote = larder.DataLoader(s3_url, batch_size=2, seed=5)
    assert batches(remote) == expected
    store = larder.Store.open(s3_url)
    assert store.path == s3_url
    assert store.verify()["problems"] == []


def test_push_and_pull_round_trip(tmp_path, s3_url):
    config = make_dataset(str(tmp_path))
    local = tmp_path / "store"
    larder.prepare(config, local)
    pushed = larder.push(local, s3_url)
    assert pushed["shards_uploaded"] > 0
    assert larder.push(local, s3_url)["shards_uploaded"] == 0
    pulled = larder.pull(s3_url, tmp_path / "pulled")
    assert pulled["shards_downloaded"] == pushed["shards_uploaded"]
    assert larder.Store.open(tmp_path / "pulled").verify()["problems"] == []


def test_an_unreachable_endpoint_raises_remote_error_naming_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LARDER_REMOTE_RETRIES", "1")
    monkeypatch.setenv("LARDER_REMOTE_RETRY_TIMEOUT", "1")
    with pytest.raises(larder.RemoteError, match="s3://nowhere/store/catalog.sqlite"):
        larder.Store.open("s3://nowhere/store")


def test_a_forked_child_opens_its_own_cache_and_never_uses_the_parents(tmp_path, s3_url):
    """A PyTorch-style worker: the parent opened the store; the child must neither hang nor
    share the parent's cache folder (each would punch out chunks the other thinks it holds)."""
    config = make_dataset(str(tmp_path))
    larder.prepare(config, s3_url)
    store = larder.Store.open(s3_url)
    expected = batches(larder.DataLoader(store, batch_size=2, seed=5))

    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            signal.alarm(60)
            try:
                list(larder.DataLoader(store, batch_size=2, seed=5))
                code = 2  # the parent's store must not work here
            except larder.RemoteError as e:
                if "another process" not in str(e):
                    code = 3
                else:
                    # A store opened afresh works, in a private cache beside the parent's.
                    fresh = batches(larder.DataLoader(s3_url, batch_size=2, seed=5))
                    code = 0 if fresh == expected else 4
            del store  # must not hang on the parent's I/O threads
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), "the child hung or crashed"
    assert os.WEXITSTATUS(status) == 0, f"child exit code {os.WEXITSTATUS(status)}"
    # The parent's cache is intact and still serves.
    assert batches(larder.DataLoader(store, batch_size=2, seed=5)) == expected
