"""Stores in object storage from Python: prepare into s3://, DataLoader over the URL, push and
pull, against the S3 server scripts/test starts (endpoint and credentials in AWS_*)."""

import os
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
