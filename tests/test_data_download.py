"""Tests of data_download.sh, offline: mirror copies, a local HTTP server, and no network."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_download.sh"
CAT = "Clothing_Shoes_and_Jewelry"
REVIEWS, META = f"reviews_{CAT}_5.json.gz", f"meta_{CAT}.json.gz"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("gzip") is None,
                                reason="data_download.sh needs bash and gzip")


def run(*args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in ("RAREC_MIRROR", "RAREC_DOWNLOAD_BASE")}
    env.update({"RAREC_DOWNLOAD_RETRIES": "1", "RAREC_DOWNLOAD_TIMEOUT": "5", **(env_extra or {})})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def gz_bytes(n_lines: int, seed: int = 0) -> bytes:
    # Non-repetitive content so that the gzip is large enough to cut in the middle.
    import random

    rnd = random.Random(seed)
    text = "".join(f'{{"reviewerID": "u{rnd.random()}", "asin": "a{rnd.random()}", "unixReviewTime": {i}}}\n'
                   for i in range(n_lines))
    return gzip.compress(text.encode())


class _Server:
    """A local HTTP server with byte-range support (curl -C - needs it; http.server lacks it)."""

    def __init__(self, files: dict[str, bytes]):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.files, self.requests = files, []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_help():
    result = run("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: bash data_download.sh")
    assert "--from DIR" in result.stdout and "RAREC_MIRROR" in result.stdout
    bad = run("--dataset", "shoes")
    assert bad.returncode != 0 and "unknown dataset 'shoes'" in bad.stderr and "--list" in bad.stderr
    old = run("--dataset", "scientific", "--version", "2014")
    assert old.returncode != 0 and "not in the 2014 release (it is in: 2018,2023)" in old.stderr
    listing = run("--list")
    assert listing.returncode == 0 and "Industrial_and_Scientific        2018,2023        scientific,industrial" in listing.stdout
    from rarec_lite.data import CATEGORIES
    assert len(listing.stdout.splitlines()) == 1 + len(CATEGORIES)  # header + every category of categories.tsv


def test_from_openp5_layout_and_rerun_skips(tmp_path):
    mirror = tmp_path / "mirror" / "amazon_cloth"
    mirror.mkdir(parents=True)
    (mirror / "user_sequence.txt").write_text("A i1 i2 i3 i4 i5\n")
    (mirror / "item_brand_categories.tsv").write_text("asin\tbrand\tcategories\ni1\tX\tClothing, Shoes & Jewelry | Men\n")
    dest = tmp_path / "dest"
    result = run("--from", str(tmp_path / "mirror"), "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    for name in ("user_sequence.txt", "item_brand_categories.tsv"):
        assert (dest / name).read_bytes() == (mirror / name).read_bytes()
    assert not list(dest.glob("*.part"))
    again = run("--from", str(mirror), "--dest", str(dest))
    assert again.returncode == 0 and again.stdout.count("already there, skipped") == 2
    # the OpenP5 files are the 2014 data: asking for another version says so instead of copying them
    other = run("--from", str(mirror), "--dest", str(tmp_path / "dest2018"), "--version", "2018")
    assert other.returncode != 0 and "2014 5-core data" in other.stderr and "--version 2018" in other.stderr
    assert not (tmp_path / "dest2018").exists()  # the empty destination it made is removed again


def test_from_raw_2014_files_via_rarec_mirror(tmp_path):
    mirror = tmp_path / "m" / "cloth"
    mirror.mkdir(parents=True)
    (mirror / REVIEWS).write_bytes(gz_bytes(50, 1))
    (mirror / META).write_bytes(gz_bytes(20, 2))
    home = tmp_path / "home"
    result = run(env_extra={"RAREC_MIRROR": str(tmp_path / "m"), "RAREC_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    dest = home / "raw" / "cloth"  # the default destination
    assert (dest / REVIEWS).read_bytes() == (mirror / REVIEWS).read_bytes()
    assert (dest / META).read_bytes() == (mirror / META).read_bytes()


def test_from_mirror_with_bad_gzip_is_rejected(tmp_path):
    mirror = tmp_path / "m"
    mirror.mkdir()
    blob = gz_bytes(3000)
    (mirror / REVIEWS).write_bytes(blob[: len(blob) // 2])
    (mirror / META).write_bytes(gz_bytes(10))
    dest = tmp_path / "dest"
    result = run("--from", str(mirror), "--dest", str(dest))
    assert result.returncode != 0 and "gzip -t failed" in result.stderr
    assert not (dest / REVIEWS).exists() and not list(dest.glob("*.part"))
    nothing = run("--from", str(tmp_path / "dest"), "--dest", str(tmp_path / "d2"))
    assert nothing.returncode != 0 and "no cloth (Clothing_Shoes_and_Jewelry) data in" in nothing.stderr


def test_download_resumes_a_partial_file(tmp_path):
    reviews, meta = gz_bytes(4000, 1), gz_bytes(500, 2)
    dest = tmp_path / "dest"
    dest.mkdir()
    half = len(reviews) // 2
    (dest / f"{REVIEWS}.part").write_bytes(reviews[:half])
    with _Server({REVIEWS: reviews, META: meta}) as server:
        result = run("--dest", str(dest), env_extra={"RAREC_DOWNLOAD_BASE": server.url})
        assert result.returncode == 0, result.stderr
        assert (REVIEWS, f"bytes={half}-") in server.requests  # resumed, not restarted
        assert (dest / REVIEWS).read_bytes() == reviews and (dest / META).read_bytes() == meta
        assert not list(dest.glob("*.part"))
        n = len(server.requests)
        again = run("--dest", str(dest), env_extra={"RAREC_DOWNLOAD_BASE": server.url})
        assert again.returncode == 0 and again.stdout.count("already complete, skipped") == 2
        assert len(server.requests) == n  # nothing fetched


def test_any_category_by_alias_downloads_its_release_files(tmp_path):
    cat = "Industrial_and_Scientific"  # no 2014 release: the first release that has it (2018) is the default
    files = {f"{cat}_5.json.gz": gz_bytes(40, 3), f"meta_{cat}.json.gz": gz_bytes(10, 4)}
    home = tmp_path / "home"
    with _Server(files) as server:
        result = run("--dataset", "scientific", env_extra={"RAREC_DOWNLOAD_BASE": server.url, "RAREC_HOME": str(home)})
        assert result.returncode == 0, result.stderr
        assert sorted(name for name, _ in server.requests) == sorted(files)
    for name, body in files.items():
        assert (home / "raw" / "scientific" / name).read_bytes() == body  # keyed by the alias
    assert "rarec-lite prepare --dataset scientific" in result.stdout
    with _Server({"Toys_and_Games.jsonl.gz": gz_bytes(5), "meta_Toys_and_Games.jsonl.gz": gz_bytes(5)}) as server:
        toys = run("--dataset", "Toys_and_Games", "--version", "2023", "--dest", str(tmp_path / "t"),
                   env_extra={"RAREC_DOWNLOAD_BASE": server.url})
        assert toys.returncode == 0, toys.stderr and (tmp_path / "t" / "Toys_and_Games.jsonl.gz").is_file()


def test_from_lcrec_layout(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "amazon_scientific").mkdir(parents=True)
    (mirror / "amazon_scientific" / "Scientific.inter.json").write_text('{"0": [0, 1, 2, 3, 4]}')
    (mirror / "amazon_scientific" / "Scientific.item.json").write_text('{"0": {"title": "A"}}')
    (mirror / "amazon_cloth").mkdir()
    (mirror / "amazon_cloth" / "user_sequence.txt").write_text("A i1 i2 i3 i4 i5\n")
    home = tmp_path / "home"
    result = run("--dataset", "scientific", env_extra={"RAREC_MIRROR": str(mirror), "RAREC_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    got = sorted(p.name for p in (home / "raw" / "scientific").iterdir())
    assert got == ["Scientific.inter.json", "Scientific.item.json"]
    # a mirror with only another dataset's folders lends nothing, and leaves no empty destination
    sports = run("--dataset", "sports", env_extra={"RAREC_MIRROR": str(mirror), "RAREC_HOME": str(home)})
    assert sports.returncode != 0 and "no sports (Sports_and_Outdoors) data in" in sports.stderr
    assert not (home / "raw" / "sports").exists()
    # an item file missing beside the interactions is named
    (mirror / "amazon_scientific" / "Scientific.item.json").unlink()
    broken = run("--dataset", "scientific", "--dest", str(tmp_path / "d"), env_extra={"RAREC_MIRROR": str(mirror)})
    assert broken.returncode != 0 and "has no Scientific.item.json beside it" in broken.stderr


def test_download_rejects_a_bad_gzip(tmp_path):
    good = gz_bytes(300)
    with _Server({REVIEWS: good[: len(good) // 2], META: good}) as server:
        result = run("--dest", str(tmp_path), env_extra={"RAREC_DOWNLOAD_BASE": server.url})
    assert result.returncode != 0 and "not a valid gzip" in result.stderr
    assert not (tmp_path / REVIEWS).exists() and not (tmp_path / f"{REVIEWS}.part").exists()


def test_offline_gives_a_clear_message(tmp_path):
    with socket.socket() as sock:  # a port with nothing listening: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run("--dest", str(tmp_path), env_extra={"RAREC_DOWNLOAD_BASE": f"http://127.0.0.1:{port}"})
    assert result.returncode != 0
    assert "Could not download" in result.stderr and "--from DIR" in result.stderr
    assert "RAREC_MIRROR" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / REVIEWS).exists()


@pytest.mark.realdata
def test_from_the_shared_scientific_mirror(shared_scientific_dir, tmp_path):
    result = run("--dataset", "scientific", "--from", str(shared_scientific_dir.parent), "--dest", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    for name in ("Scientific.inter.json", "Scientific.item.json"):
        assert (tmp_path / "s" / name).read_bytes() == (shared_scientific_dir / name).read_bytes()


@pytest.mark.realdata
def test_from_the_shared_mirror(shared_cloth_dir, tmp_path):
    for source in (shared_cloth_dir, shared_cloth_dir.parent):
        dest = tmp_path / source.name
        result = run("--from", str(source), "--dest", str(dest))
        assert result.returncode == 0, result.stderr
        assert (dest / "user_sequence.txt").read_bytes() == (shared_cloth_dir / "user_sequence.txt").read_bytes()
        assert (dest / "item_brand_categories.tsv").stat().st_size == (
            shared_cloth_dir / "item_brand_categories.tsv").stat().st_size
