"""The end-to-end pipeline: config handling, a tiny full run, resume, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rarec_lite.metrics import metrics_from_ranks
from rarec_lite.pipeline import METHODS, config_path, format_report, load_config, run_pipeline


def tiny_config(**methods) -> dict:
    return {
        "name": "unit-tiny",
        "description": "toy data, tiny random LLaMA",
        "seed": 0,
        "data": {"dataset": "toy", "max_users": 0},
        "sasrec": {"hidden": 16, "max_len": 10, "num_layers": 1, "epochs": 2, "batch_size": 64},
        "eval": {"num_users": 40, "bootstrap_resamples": 50},
        "llm": {"name": "tiny-llama", "quantization": "none", "batch_size": 64, "user_max_tokens": 200,
                "item_max_tokens": 40, "history_items": 2},
        "alignment": {"num_id_tokens": 1, "num_instruction_tokens": 2},
        "train": {"samples": 24, "steps": 3, "batch_size": 8, "checkpoint_every": 2},
        "methods": {"run": methods.get("run", ["mostpop", "sasrec", "tfidf_knn", "id_direct", "id_translation",
                                               "rarec"])},
    }


def test_packaged_configs_load_and_name_known_methods():
    for name in ("ci-tiny", "cpu-quick", "gpu-t4"):
        cfg = load_config(name)
        assert cfg["name"] == name
        assert all(m in METHODS for m in cfg["methods"]["run"])
        assert config_path(name).name == f"{name}.toml"
    # the GPU config carries every ablation of the paper's Table 3
    assert {"rarec_no_instruction", "rarec_shared_projector", "rarec_no_infonce",
            "rarec_no_data_construction"} <= set(load_config("gpu-t4")["methods"]["run"])


def test_config_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[llm]\nnmae = "tiny-llama"\n')
    with pytest.raises(ValueError, match=r"bad\.toml.*\[llm\].*nmae"):
        load_config(bad)
    bad.write_text('[methods]\nrun = ["rarec", "gpt5"]\n')
    with pytest.raises(ValueError, match="gpt5"):
        load_config(bad)
    bad.write_text("[llm\n")
    with pytest.raises(ValueError, match=r"bad\.toml: malformed TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="ci-tiny"):
        load_config("no-such-config")


def test_tiny_pipeline_runs_resumes_and_reports(tmp_path, capsys):
    cfg = tiny_config()
    result = run_pipeline(cfg, out=tmp_path, progress=False)
    out = tmp_path / "results" / "unit-tiny"
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["methods"]) == {"mostpop", "sasrec", "tfidf_knn", "id_direct", "id_translation", "rarec"}
    ranks = np.load(out / "ranks.npz")
    for name, entry in saved["methods"].items():
        assert entry["users"] == 40 and entry["protocol"] == "full-ranking" and entry["ties"] == "expected"
        # the table's numbers are the metrics of the stored per-user ranks (exact expectation over ties)
        recomputed = metrics_from_ranks(ranks[name], [10, 20, 50, 100], tied=ranks[f"{name}_tied"])
        for key, value in recomputed.items():
            assert entry[key] == pytest.approx(value)
        lo, hi = entry["ci95_NDCG@10"]
        assert lo <= entry["NDCG@10"] <= hi
    # only RA-Rec trains here, with the closed-form parameter count, and it uses soft prompts
    rarec = saved["methods"]["rarec"]
    assert rarec["trainable_params"] > 0 and rarec["soft_prompt_tokens"] == 3
    assert saved["methods"]["id_translation"]["trainable_params"] == 0
    assert "vs_sasrec_NDCG@10" in rarec and "vs_sasrec_NDCG@10" not in saved["methods"]["sasrec"]
    assert {"vs_tfidf_knn_HR@100", "vs_id_translation_HR@100"} <= set(rarec)
    # training starts from the zero-shot model (closed gate) and reports where it started
    assert set(rarec["step0"]) == {"HR@10", "HR@100", "NDCG@10", "NDCG@100", "max_item_deviation"}
    assert rarec["step0"]["max_item_deviation"] < 1e-3
    # a constant scorer of ties would get exactly chance: MostPop ties none here, TF-IDF is a real baseline
    assert saved["methods"]["tfidf_knn"]["trainable_params"] == 0
    report = (out / "report.md").read_text()
    assert "| RA-Rec |" in report and "full-ranking" in report
    assert "the last layer's map isometric" in report and "a softmax with gates of its own" in report
    assert (out / "figures" / "metrics.png").stat().st_size > 1000
    assert (out / "figures" / "training.png").stat().st_size > 1000

    # a second call reuses every finished stage and gives the same table
    capsys.readouterr()
    again = run_pipeline(cfg, out=tmp_path, progress=False)
    log = capsys.readouterr().out
    assert "SASRec: reusing" in log and "rarec: reusing" in log and "training" not in log
    assert log.count("SASRec: reusing") == 1, log
    # with progress on, cached_sasrec_run says it and the pipeline does not repeat it
    capsys.readouterr()
    run_pipeline(cfg, out=tmp_path, progress=True)
    assert capsys.readouterr().out.count("SASRec: reusing") == 1
    assert again["methods"] == result["methods"]
    # the resumed report still names the backbone and counts every call
    report = (out / "report.md").read_text()
    assert "Backbone: tiny-llama" in report and "over 3 call(s)" in report


def test_pipeline_refuses_to_resume_on_other_data(tmp_path):
    cfg = tiny_config(run=["mostpop"])
    run_pipeline(cfg, out=tmp_path, progress=False)
    data_json = tmp_path / "results" / "unit-tiny" / "data.json"
    stored = json.loads(data_json.read_text())
    assert stored["name"] == "toy" and stored["users"] > 0 and len(stored["sequences_sha256"]) == 64
    # as if the first call had read other data (e.g. the synthetic fallback before a mirror was set)
    stored["sequences_sha256"] = "0" * 64
    data_json.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="other data"):
        run_pipeline(cfg, out=tmp_path, progress=False)


def test_pipeline_refuses_to_mix_configs_in_one_directory(tmp_path):
    cfg = tiny_config(run=["mostpop"])
    run_pipeline(cfg, out=tmp_path, progress=False)
    cfg["sasrec"]["hidden"] = 32
    with pytest.raises(ValueError, match="different configuration"):
        run_pipeline(cfg, out=tmp_path, progress=False)


def test_auto_precision_is_recorded_as_resolved_and_a_change_refused(tmp_path, monkeypatch, capsys):
    """config.json keeps the precision "auto" resolved to on this machine; where "auto" would mean another one
    (here: the same directory on a CPU said to have native bf16), the run is refused instead of mixing rows.
    A CPU without native bf16 is told that its LLM stages run in fp32 and take longer; one with it is not."""
    from rarec_lite import llm

    monkeypatch.setattr(llm, "resolve_device", lambda device="auto": "cpu")
    monkeypatch.setattr(llm, "cpu_has_native_bf16", lambda: False)
    cfg = tiny_config(run=["mostpop"])
    cfg["llm"]["quantization"] = "auto"
    run_pipeline(cfg, out=tmp_path, progress=False)
    saved = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert saved["llm"]["quantization"] == "none"
    assert "this CPU has no native bf16, so the LLM stages run in fp32" in capsys.readouterr().out
    monkeypatch.setattr(llm, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(ValueError, match=r"different configuration.*\[llm\] quantization"):
        run_pipeline(cfg, out=tmp_path, progress=False)
    run_pipeline(cfg, out=tmp_path / "bf16", progress=False)
    out = capsys.readouterr().out
    assert '"auto": bf16 on this machine' in out and "no native bf16" not in out
    cfg["llm"]["quantization"] = "bf16"  # asked for explicitly where it is emulated: warned, still run
    monkeypatch.setattr(llm, "cpu_has_native_bf16", lambda: False)
    run_pipeline(cfg, out=tmp_path / "bf16-emulated", progress=False)
    assert 'WARNING: [llm] quantization = "bf16" on a CPU without native bf16' in capsys.readouterr().out


def test_report_marks_ci_and_truncation():
    result = {
        "config": "x", "description": "d", "protocol": "full-ranking, leave-one-out",
        "dataset": {"users": 10, "items": 5, "eval_users": 10}, "backbone": None,
        "methods": {"id_translation": {"label": "ID Translation, zero-shot", "HR@10": 0.5, "NDCG@10": 0.25,
                                       "prompt_tokens": 64, "prompt_tokens_needed": 300.0,
                                       "vs_sasrec_NDCG@10": {"diff": -0.1, "ci_low": -0.2, "ci_high": 0.0,
                                                             "p_value": 0.04}}},
        "calls": [{"wall_seconds": 60.0, "peak_rss_mib": 100.0}, {"wall_seconds": 30.0, "peak_rss_mib": 80.0}],
    }
    text = format_report(result)
    assert "64 (needs 300)" in text
    assert "-0.1000 [-0.2000, +0.0000], p=0.04" in text
    assert "1.5 min over 2 call(s)" in text and "100 MiB" in text


def test_config_values_of_the_wrong_type_name_file_and_key(tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text('[sasrec]\nepochs = "3"\n')
    with pytest.raises(ValueError, match=r'typo\.toml: \[sasrec\] epochs = .3. must be an int'):
        load_config(bad)
    bad.write_text('seed = "zero"\n')
    with pytest.raises(ValueError, match=r"typo\.toml: \[top level\] seed"):
        load_config(bad)
    bad.write_text("[train]\nlr = 1\ndenoise = false\n")  # an int where a float is expected is fine
    cfg = load_config(bad)
    assert cfg["train"]["lr"] == 1 and cfg["train"]["denoise"] is False


def test_cli_turns_os_errors_into_one_line(tmp_path, capsys):
    from rarec_lite.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["pipeline", "--config", "ci-tiny", "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rarec-lite pipeline: error:") and "Traceback" not in err


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    from rarec_lite.files import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_standardized_scores_match_numpy_and_methods_can_be_added_later(tmp_path, capsys):
    import torch

    from rarec_lite.alignment import TwoTower
    from rarec_lite.metrics import full_ranking_ranks
    from rarec_lite.pipeline import Experiment, load_config

    cfg = tiny_config(run=["mostpop", "id_translation"])
    cfg["llm"].update(pooling="mean", standardize=True)
    run_pipeline(cfg, out=tmp_path, progress=False)
    out = tmp_path / "results" / "unit-tiny"
    npz = np.load(out / "ranks.npz")
    stored = npz["id_translation"] + npz["id_translation_tied"]  # the pessimistic rank
    assert "mean pooling" in (out / "report.md").read_text() and "standardised" in (out / "report.md").read_text()

    # independent: plain mean-pooled text states, standardised in float64 numpy, ranked by us
    run = Experiment(load_config(cfg), out, progress=False)
    run.load_data()
    tower = TwoTower(run.backbone, None, pooling="mean")
    items = tower.encode_batched(run.item_prompts("translation"), "item", max_tokens=40).double().numpy()
    users = tower.encode_batched([run.user_prompt("translation", u, h, 200).text
                                  for u, h in zip(run.eval_users, run.eval_histories)], "user",
                                 max_tokens=200).double().numpy()
    # per tower: items by the catalogue's statistics, users by training users' validation prompts
    stats = tower.encode_batched(run.stats_prompts("translation")[0], "user", max_tokens=200).double().numpy()
    assert not set(run.stats_users()) & set(run.eval_users)  # never an evaluation user
    mu, sd = items.mean(0), items.std(0, ddof=1)
    u_mu, u_sd = stats.mean(0), stats.std(0, ddof=1)
    z_items = (items - mu) / sd
    z_items *= np.sqrt(items.shape[1]) / np.linalg.norm(z_items, axis=1, keepdims=True)  # [llm] item_norm = true
    z = ((users - u_mu) / u_sd) @ z_items.T
    expected = full_ranking_ranks(torch.from_numpy(z), run.eval_targets, run.eval_histories)
    assert np.mean(stored == expected) >= 0.95  # float32 vs float64 ties may move a rank or two
    plain = full_ranking_ranks(torch.from_numpy(((users - u_mu) / u_sd) @ ((items - mu) / sd).T), run.eval_targets,
                               run.eval_histories)
    assert np.mean(plain == expected) < np.mean(stored == expected)  # the item rows' lengths do change ranks
    raw = full_ranking_ranks(torch.from_numpy(users @ items.T), run.eval_targets, run.eval_histories)
    assert not np.array_equal(raw, stored)  # standardising changes the ranking

    # a later call adds a method to the finished run and reuses the rest
    capsys.readouterr()
    result = run_pipeline(cfg, out=tmp_path, progress=False, add_methods=["id_direct"])
    log = capsys.readouterr().out
    assert "mostpop: reusing" in log and "id_translation: reusing" in log and "id_direct: reusing" not in log
    assert list(result["methods"]) == ["mostpop", "id_translation", "id_direct"]
    assert "Data: toy (the synthetic toy dataset" in (out / "report.md").read_text()

    # late fusion = z-scored SASRec scores + z-scored text scores, recomputed here in float64 numpy
    assert "− Late fusion" not in (out / "report.md").read_text()  # no column for a baseline that did not run
    res = run_pipeline(cfg, out=tmp_path, progress=False, add_methods=["late_fusion"])
    assert (out / "cache" / "eval_user_states_translation.safetensors").exists()  # ID Translation's users, reused
    assert "vs_late_fusion_HR@100" in res["methods"]["id_translation"]
    report = (out / "report.md").read_text()
    assert "HR@100 − Late fusion" in report
    # its prompts are ID Translation's, and the token-budget list says so for both
    budgets = report.split("Token budgets", 1)[1]
    label = res["methods"]["late_fusion"]["label"]
    assert f"- {label}: " in budgets and res["methods"]["late_fusion"]["budget"] == res["methods"]["id_translation"]["budget"]
    run.load_sasrec()
    zrow = lambda x: (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)  # noqa: E731
    fused = zrow(run.sasrec_scores().double().numpy()) + zrow(z)
    expected = full_ranking_ranks(torch.from_numpy(fused), run.eval_targets, run.eval_histories)
    npz = np.load(out / "ranks.npz")
    assert np.mean(npz["late_fusion"] + npz["late_fusion_tied"] == expected) >= 0.95
    with pytest.raises(ValueError, match="gpt5"):
        run_pipeline(cfg, out=tmp_path, progress=False, add_methods=["gpt5"])
    with pytest.raises(ValueError, match="no method"):
        run_pipeline(cfg, out=tmp_path, progress=False, add_methods=[])


def test_item_norm_off_scores_the_plain_standardised_dot_product_and_the_report_says_so(tmp_path):
    """[llm] item_norm = false: the stored ranks are the plain standardised dot product's (not the cosine's),
    metrics.json records it, the report says so; with standardize = false it is recorded as off."""
    import torch

    from rarec_lite.metrics import full_ranking_ranks
    from rarec_lite.pipeline import Experiment

    cfg = tiny_config(run=["id_translation"])
    cfg["llm"].update(pooling="mean", standardize=True, item_norm=False)
    res = run_pipeline(cfg, out=tmp_path, progress=False)
    out = tmp_path / "results" / "unit-tiny"
    assert res["scoring"]["item_norm"] is False
    assert "the item states' own lengths kept ([llm] item_norm = false)" in (out / "report.md").read_text()
    run = Experiment(load_config(cfg), out, progress=False)
    run.load_data()
    tower = run.build_tower(METHODS["id_translation"])
    assert tower.item_norm is False
    items, _ = run.item_text_states()
    users = run.zero_shot_user_states(tower, METHODS["id_translation"])
    zu, zi = tower.standardize(users, "user"), (items - tower.stats["item"][0]) / tower.stats["item"][1]
    expected = full_ranking_ranks(zu @ zi.T, run.eval_targets, run.eval_histories)
    npz = np.load(out / "ranks.npz")
    assert np.array_equal(npz["id_translation"] + npz["id_translation_tied"], expected)
    cfg["llm"].update(standardize=False, item_norm=True)
    assert run_pipeline(cfg, out=tmp_path / "raw", progress=False)["scoring"]["item_norm"] is False


def test_bad_values_are_refused_when_the_config_is_read(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, match in [('[llm]\npooling = "avg"\n', r"bad\.toml: \[llm\] pooling = 'avg' must be one of"),
                        ('[llm]\nquantization = "nf5"\n', r"\[llm\] quantization = 'nf5'"),
                        ("[train]\nbatch_size = 1\n", r"\[train\] batch_size = 1 must be >= 2"),
                        ('[train]\nrank_loss = "hinge"\n', r"\[train\] rank_loss"),
                        ("[sasrec]\nepochs = 0\n", r"\[sasrec\] epochs = 0 must be >= 1"),
                        ("[llm]\nmax_layers = -3\n", r"\[llm\] max_layers = -3 must be >= 0"),
                        ("[llm]\nhistory_items = -1\n", r"\[llm\] history_items = -1 must be >= 0"),
                        ("[train]\nlr = -1.0\n", r"\[train\] lr = -1.0 must be > 0"),
                        ("[train]\ntemperature = 0.0\n", r"\[train\] temperature = 0.0 must be > 0"),
                        ('[alignment]\nreparam_init = "svd"\n', r"\[alignment\] reparam_init = 'svd' must be one of"),
                        ('[alignment]\nuser_statistics = "own"\n', r"\[alignment\] user_statistics"),
                        ('[alignment]\ninstruction_softmax = "joint"\n', r"\[alignment\] instruction_softmax"),
                        ('name = "../../escape"\n', r"name = '\.\./\.\./escape' must be letters")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_config(bad)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_config(tmp_path)
    bad.write_text('[alignment]\nreparam_init = "Isometric"\ninstruction_softmax = "Own"\n')
    cfg = load_config(bad)  # a choice in other case means the same choice wherever it is used
    assert (cfg["alignment"]["reparam_init"], cfg["alignment"]["instruction_softmax"]) == ("isometric", "own")


def test_a_clash_names_the_keys_that_differ(tmp_path):
    cfg = tiny_config(run=["mostpop"])
    run_pipeline(cfg, out=tmp_path, progress=False)
    cfg["train"]["steps"] = 9
    with pytest.raises(ValueError, match=r"differs in \[train\] steps"):
        run_pipeline(cfg, out=tmp_path, progress=False)


def test_popularity_negatives_need_the_softmax_at_config_read(tmp_path):
    # a cross-field error is caught when the config is read, naming the file and the section
    from rarec_lite.pipeline import load_config

    bad = tmp_path / "pop.toml"
    bad.write_text('name = "x"\n[train]\nnegative_sampling = "popularity"\n')
    with pytest.raises(ValueError, match=r"pop\.toml: \[train\] negative_sampling = \"popularity\" needs rank_loss = "
                                         r"\"softmax\" .*'bpr', the default"):
        load_config(str(bad))
    good = tmp_path / "ok.toml"
    good.write_text('name = "x"\n[train]\nnegative_sampling = "popularity"\nrank_loss = "softmax"\n')
    assert load_config(str(good))["train"]["negative_sampling"] == "popularity"


def test_rarec_towers_start_isometric_with_the_text_mean_and_the_items_sigma(tmp_path):
    """cpu-quick's RA-Rec start, built by the pipeline: the last layer's map is the isometric one (orthogonal
    columns, the same for both towers), the instruction has its own closed gates, and the user tower keeps its
    text-only mean while taking the item tower's sigma; ``reparam_init = "random"`` keeps the random tied map."""
    import torch

    from rarec_lite.pipeline import Experiment

    cfg = tiny_config(run=["mostpop"])
    cfg["llm"].update(pooling="mean", standardize=True)
    run = Experiment(load_config(cfg), tmp_path, progress=False)
    run.load_data()
    run.load_sasrec()
    method = METHODS["rarec"]
    tower = run.build_tower(method)
    al, last = tower.alignment, tower.alignment.num_layers - 1
    w = al.reparam["user"][last].weight.detach()
    gram = w.T @ w  # W = V_d S_d^-1 c: orthogonal columns (norms c / s_k)
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), rtol=0, atol=1e-5)
    assert torch.diagonal(gram).min() > 0.1
    assert torch.equal(w, al.reparam["item"][last].weight) and al.prefix_groups == (al.num_instruction_tokens, 1)
    assert all(bool((g == 0).all()) for g in al.instruction_gate.values())
    assert tower.user_sigma == "item" and torch.equal(tower.stats["user"][1], tower.stats["item"][1])
    text_users = run.user_standardization_states(method.prompts)
    torch.testing.assert_close(tower.stats["user"][0], text_users.mean(0), rtol=0, atol=1e-5)
    zero_shot = run.build_tower(METHODS["id_translation"])  # zero-shot towers keep each tower's own statistics
    assert zero_shot.user_sigma == "own" and not torch.equal(zero_shot.stats["user"][1], zero_shot.stats["item"][1])
    run.cfg["alignment"]["reparam_init"] = "random"
    w = run.build_tower(method).alignment.reparam["user"][last].weight.detach()
    assert (w.T @ w - torch.eye(w.shape[1])).abs().max() > 0.1
