"""A worker host's copies of remote blobs: checked against their sha256, fetched again when
corrupt, least recently used out past the byte cap, and one good file when fetched twice at once."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import StorageError
from service.storage.cache import FETCH_PREFIX, BlobCache


class Remote:
    """Blobs by sha256, served in chunks; counts fetches."""

    def __init__(self, *payloads: bytes) -> None:
        self.blobs = {hashlib.sha256(payload).hexdigest(): payload for payload in payloads}
        self.fetches: list[str] = []
        self.pause = threading.Event()
        self.pause.set()

    def fetch(self, sha256: str) -> Iterator[bytes]:
        self.fetches.append(sha256)
        payload = self.blobs[sha256]
        for start in range(0, len(payload), 1000):
            self.pause.wait()
            yield payload[start : start + 1000]


def _cache(folder: Path, remote: Remote, max_bytes: int = 10**9) -> BlobCache:
    return BlobCache(folder, max_bytes, remote.fetch, abandoned_after_s=3600)


def test_a_blob_is_fetched_once_and_read_from_its_copy_after(tmp_path: Path) -> None:
    remote = Remote(b"a" * 2500)
    (sha256,) = remote.blobs
    first = _cache(tmp_path, remote).path(sha256)
    second = _cache(tmp_path, remote).path(sha256)
    assert first == second == tmp_path / sha256
    assert first.read_bytes() == b"a" * 2500
    assert remote.fetches == [sha256]
    assert [path.name for path in tmp_path.iterdir()] == [sha256]


def test_a_corrupted_copy_is_deleted_and_fetched_again(tmp_path: Path) -> None:
    remote = Remote(b"weights" * 500)
    (sha256,) = remote.blobs
    copy = _cache(tmp_path, remote).path(sha256)
    copy.write_bytes(b"bit rot")

    again = _cache(tmp_path, remote).path(sha256)
    assert again.read_bytes() == b"weights" * 500
    assert remote.fetches == [sha256, sha256]


def test_bytes_altered_in_the_store_are_refused_and_not_kept(tmp_path: Path) -> None:
    remote = Remote(b"original")
    (sha256,) = remote.blobs
    remote.blobs[sha256] = b"tampered"
    with pytest.raises(StorageError, match="does not match its sha256"):
        _cache(tmp_path, remote).path(sha256)
    assert list(tmp_path.iterdir()) == []


def test_the_least_recently_used_copies_go_past_the_byte_cap(tmp_path: Path) -> None:
    payloads = [bytes([index]) * 1000 for index in range(4)]
    remote = Remote(*payloads)
    shas = [hashlib.sha256(payload).hexdigest() for payload in payloads]
    for age, sha256 in enumerate(shas[:3]):
        _cache(tmp_path, remote, max_bytes=3000).path(sha256)
        moment = time.time() - 100 + age
        os.utime(tmp_path / sha256, (moment, moment))
    # Using the oldest makes it the most recent: the second is now the least recently used.
    _cache(tmp_path, remote, max_bytes=3000).path(shas[0])

    _cache(tmp_path, remote, max_bytes=3000).path(shas[3])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([shas[0], shas[2], shas[3]])


def test_the_running_jobs_copies_stay_even_past_the_cap(tmp_path: Path) -> None:
    payloads = [b"x" * 1000, b"y" * 1000]
    remote = Remote(*payloads)
    shas = [hashlib.sha256(payload).hexdigest() for payload in payloads]
    job = _cache(tmp_path, remote, max_bytes=1500)
    paths = [job.path(sha256) for sha256 in shas]
    assert all(path.is_file() for path in paths)
    # Another job's cache (a new store) may evict them once this one no longer holds them.
    other = Remote(b"z" * 1000)
    _cache(tmp_path, other, max_bytes=1500).path(*other.blobs)
    assert [path.is_file() for path in paths] == [False, False]


def test_two_fetches_of_one_blob_at_once_leave_one_good_file(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    remote = Remote(payload)
    (sha256,) = remote.blobs
    remote.pause.clear()
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(_cache(tmp_path, remote).path(sha256)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(remote.fetches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    remote.pause.set()
    for thread in threads:
        thread.join(10)

    assert len(remote.fetches) == 2, "both fetched at once"
    assert results == [tmp_path / sha256] * 2
    assert (tmp_path / sha256).read_bytes() == payload
    assert [path.name for path in tmp_path.iterdir()] == [sha256]


def test_a_fetch_abandoned_by_a_killed_worker_is_removed_once_old(tmp_path: Path) -> None:
    stale = tmp_path / f"{FETCH_PREFIX}killed"
    fresh = tmp_path / f"{FETCH_PREFIX}running"
    for path in (stale, fresh):
        path.write_bytes(b"half a blob")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    _cache(tmp_path, Remote()).evict()
    assert not stale.exists() and fresh.exists()
