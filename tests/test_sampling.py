"""Training samples: making (train part only), denoising and diversifying, on toy data with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rarec_lite.sampling import (Sample, denoise, diversify, item_popularity, make_samples, quantile_buckets,
                                 words)

TRAIN = [np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6])]


def test_make_samples_every_position_of_the_train_part():
    got = make_samples(TRAIN, max_per_user=None)
    assert got == [Sample(0, (0,), 1), Sample(0, (0, 1), 2), Sample(0, (0, 1, 2), 3), Sample(1, (4,), 5)]
    # a LeaveOneOut-like object: only .train is read (valid/test targets never appear)
    split = SimpleNamespace(train=TRAIN, valid_target=np.array([99, 98, 97]), test_target=np.array([96, 95, 94]))
    assert make_samples(split, max_per_user=None) == got
    assert make_samples(TRAIN, max_per_user=None, min_history=2) == got[1:3]
    assert make_samples(TRAIN, max_per_user=None, max_history=2)[2] == Sample(0, (1, 2), 3)


def test_make_samples_cap_is_seeded_subset():
    a = make_samples(TRAIN, max_per_user=2, seed=3)
    assert a == make_samples(TRAIN, max_per_user=2, seed=3)
    every = make_samples(TRAIN, max_per_user=None)
    assert sum(s.user == 0 for s in a) == 2 and set(a) <= set(every) and Sample(1, (4,), 5) in a
    with pytest.raises(ValueError, match="min_history"):
        make_samples(TRAIN, min_history=0)


def test_words_lowercase_alphanumeric():
    assert words("Nike — Men > T-Shirts & Tops") == {"nike", "men", "t", "shirts", "tops"}


def test_denoise_known_answer():
    texts = ["Clothing Nike shoe", "Clothing Adidas shoe", "Clothing gold ring", "Clothing silver ring",
             "Clothing hat", "the of and"]
    samples = [Sample(0, (0,), 1),  # shares "shoe"           -> kept
               Sample(1, (0,), 2),  # shares only "clothing" -> dropped when "clothing" is too common
               Sample(2, (2,), 3),  # shares "ring"           -> kept
               Sample(3, (4,), 5)]  # target has only stop words -> dropped
    kept, report = denoise(samples, texts, max_doc_freq=None)
    assert kept == [samples[0], samples[1], samples[2]]
    assert (report["before"], report["kept"], report["dropped"]) == (4, 3, 1)
    kept, report = denoise(samples, texts, max_doc_freq=0.5)  # "clothing": 5/6 > 0.5; "shoe": 2/6
    assert kept == [samples[0], samples[2]] and report["ignored_words"] == ["clothing"]
    with pytest.raises(ValueError, match=r"samples\[0\].*item id 9"):
        denoise([Sample(0, (9,), 1)], texts)


def test_quantile_buckets_keep_ties_together():
    assert quantile_buckets(np.array([1] * 6 + [5] * 4), 2).tolist() == [0] * 6 + [1] * 4
    assert quantile_buckets(np.array([10] * 6 + [1] * 4), 2).tolist() == [1] * 6 + [0] * 4
    assert quantile_buckets(np.arange(8), 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_diversify_uniform_over_length_x_popularity_grid():
    pop = item_popularity([np.array([0] * 10), np.array([1])], 2)
    assert pop.tolist() == [10, 1]
    # 6 short users (history 1): targets 0,0,0,0,0,1; 4 long users (history 5): targets 0,1,1,1
    short = [Sample(u, (9,), t) for u, t in enumerate([0, 0, 0, 0, 0, 1])]
    long = [Sample(10 + u, (9,) * 5, t) for u, t in enumerate([0, 1, 1, 1])]
    samples = short + long
    # rows: length bucket (short, long); columns: popularity bucket (item 1 = tail, item 0 = head)
    chosen, report = diversify(samples, 4, pop, num_buckets=2, seed=0)
    assert report["cells_before"] == [[1, 5], [3, 1]]
    assert report["cells_after"] == [[1, 1], [1, 1]]
    assert report["length_ranges"] == [[1, 1], [5, 5]] and report["popularity_ranges"] == [[1, 1], [10, 10]]
    assert Sample(5, (9,), 1) in chosen and Sample(10, (9,) * 5, 0) in chosen  # the singleton cells
    # water-filling: cells of one give one, the two big cells share the rest
    chosen, report = diversify(samples, 8, pop, num_buckets=2, seed=0)
    assert report["cells_after"] == [[1, 3], [3, 1]] and len(chosen) == 8
    assert report["length_buckets_before"] == [6, 4] and report["length_buckets_after"] == [4, 4]
    assert report["popularity_buckets_after"] == [4, 4]
    assert chosen == [s for s in samples if s in chosen]  # input order kept
    assert diversify(samples, 8, pop, 2, seed=0)[0] == chosen  # seeded
    everything, report = diversify(samples, 50, pop, 2)
    assert everything == samples and report["chosen"] == 10


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cloth_sampling_pipeline(shared_cloth_dir, session_home, monkeypatch):
    from rarec_lite.data import load_dataset

    monkeypatch.setenv("RAREC_HOME", str(session_home))
    ds = load_dataset("cloth", raw_dir=shared_cloth_dir)
    split = ds.split()
    samples = make_samples(split, max_per_user=5, seed=0)
    # every sample comes from a train sequence s[:-2]: the target is never a valid/test target position
    for s in samples[:2000]:
        train = split.train[s.user]
        assert s.target == train[len(s.history)] and tuple(train[:len(s.history)]) == s.history
    # users with a train sequence of length n >= 2 give min(5, n - 1) samples
    assert len(samples) == sum(min(5, len(t) - 1) for t in split.train if len(t) >= 2)
    kept, report = denoise(samples, ds.item_text)
    assert report["before"] == len(samples) and 0.3 * len(samples) < report["kept"] < len(samples)
    chosen, report = diversify(kept, 4000, item_popularity(split.train, ds.num_items), num_buckets=4, seed=0)
    assert len(chosen) == 4000
    assert report["length_buckets_after"] == [1000] * 4 and report["popularity_buckets_after"] == [1000] * 4


def test_make_samples_from_validation_pairs_never_touch_sasrec_targets():
    # the pipeline's default: one sample per user, history s[:-2] -> target s[-2]; the targets are
    # exactly the validation targets, none of them a next item inside s[:-2] (SASRec's training targets)
    split = SimpleNamespace(train=[np.array([0, 1, 2]), np.array([4]), np.array([], dtype=np.int64)],
                            valid_history=[np.array([0, 1, 2]), np.array([4]), np.array([], dtype=np.int64)],
                            valid_target=np.array([3, 5, 6]), test_target=np.array([7, 8, 9]))
    got = make_samples(split, part="valid", max_history=2)
    assert got == [Sample(0, (1, 2), 3), Sample(1, (4,), 5)]  # user 2 has no history
    sasrec_targets = {(u, int(t)) for u, seq in enumerate(split.train) for t in seq[1:]}
    assert not {(s.user, s.target) for s in got} & sasrec_targets
    with pytest.raises(ValueError, match="part"):
        make_samples(split, part="test")
    with pytest.raises(ValueError, match="LeaveOneOut"):
        make_samples(TRAIN, part="valid")
