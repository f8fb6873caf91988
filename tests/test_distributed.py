"""Data parallelism (rarec_lite.distributed): the shard plans by hand, and a real 2-process gloo run on the
CPU (torch.multiprocessing) whose sharded encodings must equal one process's exactly and whose
data-parallel alignment training must end where one process ends (up to float summation order)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from rarec_lite import distributed
from rarec_lite.distributed import World, assigned_batches, gather_batches, gather_rows, split_rows

ID_DIM = 8
# 37 texts of many lengths (some repeated: the text-only path encodes each distinct text once),
# batches of 4: 10 batches, the last one short, so the shard edges fall inside and between batches
TEXTS = [("item " + "abcdefghij"[k % 10] * (1 + (k * 7) % 23)) for k in range(33)] + ["item aaa", "item b", "item aaa", "x"]


# ------------------------------------------------------------------------------ the plans, by hand
def test_split_rows_covers_every_row_once():
    assert [split_rows(10, World(r, 3)) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [split_rows(1, World(r, 2)) for r in range(2)] == [(0, 1), (1, 1)]  # rank 1 gets none
    assert split_rows(7) == (0, 7)  # a single process: everything


def test_assigned_batches_round_robin():
    assert list(assigned_batches(5, World(0, 2))) == [0, 2, 4]
    assert list(assigned_batches(5, World(1, 2))) == [1, 3]
    assert list(assigned_batches(1, World(1, 2))) == []


def test_single_process_gather_puts_rows_back_and_checks_the_plan():
    batches = [[2, 0], [1, 3]]
    local = torch.tensor([[20.0], [0.0], [10.0], [30.0]])  # rows of batch 0 then batch 1
    assert gather_batches(local, batches, 4).flatten().tolist() == [0.0, 10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="exactly once"):
        gather_batches(local, [[2, 0], [1, 1]], 4)
    with pytest.raises(ValueError, match="holds 3 rows"):
        gather_batches(local[:3], batches, 4)
    x = torch.ones(3, 2)
    assert gather_rows(x, 3) is x and distributed.world() == World() and distributed.is_main()


# ------------------------------------------------------------------------------ 2 processes, gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(home: str):
    """What both the reference and each rank compute with: tiny LLaMA, an aligned tower, training data."""
    from rarec_lite.alignment import RAAlignment, TwoTower
    from rarec_lite.llm import load_backbone
    from rarec_lite.sampling import Sample

    os.environ["RAREC_HOME"] = home
    torch.set_num_threads(1)
    backbone = load_backbone("tiny-llama", quantization=None)
    g = torch.Generator().manual_seed(0)
    id_emb = torch.randn(len(TEXTS), ID_DIM, generator=g)
    aligned = TwoTower(backbone, RAAlignment(backbone.info, ID_DIM, num_id_tokens=1, num_instruction_tokens=2,
                                             seed=0, gate_init=None), "mean")
    with torch.no_grad():  # an open, non-trivial soft prompt, so that the ID path changes the states
        for p in aligned.alignment.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    samples = [Sample(u, (u % 9, (u + 2) % 9), (u * 5 + 1) % 9) for u in range(12)]
    return backbone, aligned, id_emb, samples


def _compute(home: str, out: Path, steps: int = 4, encode: bool = True) -> dict:
    """The sharded encodings and a short data-parallel training run in ``out/train`` (the same code in 1 or
    2 processes; a second call with more ``steps`` resumes that run)."""
    from rarec_lite.alignment import TwoTower
    from rarec_lite.train import TrainConfig, build_text_cache, train_alignment

    distributed.ENCODED.clear()  # this computation's counts only (the counter is per process)
    backbone, aligned, id_emb, samples = _setup(home)
    final, layers = TwoTower(backbone, None, "mean").encode_batched(TEXTS, "item", batch_size=4, per_layer=True,
                                                                    max_tokens=32)
    with_ids = aligned.encode_batched(TEXTS, "user", id_emb, batch_size=4, max_tokens=32) if encode else None
    item_prompts = TEXTS[:9]
    user_prompts = [f"bought: {item_prompts[s.history[-1]]}" for s in samples]
    cache = build_text_cache(TwoTower(backbone), user_prompts, item_prompts, list(range(9)), batch_size=4,
                             max_user_tokens=32, max_item_tokens=32)
    aligned.set_standardization(final[:20], final[20:])
    cfg = TrainConfig(steps=steps, batch_size=6, lr=1e-2, lam=0.1, negatives=4, checkpoint_every=2,
                      max_user_tokens=32, max_item_tokens=32)
    result = train_alignment(aligned, samples, user_prompts, item_prompts, id_emb[:12], id_emb[:9], cache, cfg,
                             out / "train", progress=False)
    return {"final": final, "layers": layers, "with_ids": with_ids, "total": torch.tensor(result.total),
            "params": {k: v.detach().clone() for k, v in aligned.alignment.state_dict().items()},
            "stats": {t: torch.stack(aligned.stats[t]) for t in aligned.stats},
            "encoded": dict(distributed.ENCODED), "world": distributed.world()}


def _rank(rank: int, size: int, port: int, home: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init(timeout_minutes=2)
    try:
        res = _compute(home, Path(out))
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_two_processes_encode_and_train_like_one(tmp_path):
    import torch.multiprocessing as mp

    home = str(tmp_path / "home")
    one = _compute(home, tmp_path / "one")  # the reference (also builds the tiny model before the ranks load it)
    distributed.ENCODED.clear()
    two_dir = tmp_path / "two"
    two_dir.mkdir()
    mp.start_processes(_rank, args=(2, _free_port(), home, str(two_dir)), nprocs=2, start_method="spawn")
    ranks = [torch.load(two_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world"] for r in ranks] == [World(0, 2, "gloo"), World(1, 2, "gloo")]
    for r in ranks:
        # sharded encoding + gather: every row at its place, bit-identical to one process
        assert torch.equal(r["final"], one["final"]) and torch.equal(r["layers"], one["layers"])
        assert torch.equal(r["with_ids"], one["with_ids"])
        # data-parallel training: the loss of the whole batch and the same parameters, up to summation order
        torch.testing.assert_close(r["total"], one["total"], rtol=1e-4, atol=1e-5)
        for k, v in one["params"].items():
            torch.testing.assert_close(r["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        for t, v in one["stats"].items():
            torch.testing.assert_close(r["stats"][t], v, rtol=1e-4, atol=1e-5)
    # the ranks hold exactly the same parameters (identical all-reduced gradients)
    assert all(torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]) for k in ranks[0]["params"])
    # each text encoded once over the ranks: the two shares add up to one process's work
    for tower in ("user", "item"):
        assert ranks[0]["encoded"].get(tower, 0) + ranks[1]["encoded"].get(tower, 0) == one["encoded"][tower]
        assert min(ranks[0]["encoded"].get(tower, 0), ranks[1]["encoded"].get(tower, 0)) > 0
    # rank 0 wrote the checkpoint; one process resumes it for 2 more steps and ends where one process's
    # own run, resumed the same way, ends: the checkpoint holds nothing that depends on the number of processes
    from rarec_lite.files import load_checkpoint

    assert load_checkpoint(two_dir / "train" / "checkpoint.safetensors")[1]["step"] == 4
    more_one = _compute(home, tmp_path / "one", steps=6, encode=False)
    more_two = _compute(home, two_dir, steps=6, encode=False)
    assert len(more_two["total"]) == 6
    torch.testing.assert_close(more_two["total"], more_one["total"], rtol=1e-4, atol=1e-5)
    for k, v in more_one["params"].items():
        torch.testing.assert_close(more_two["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------ the pipeline under accelerate launch
@pytest.mark.slow
def test_accelerate_launch_two_processes_gives_the_single_process_metrics(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath; gloo without a GPU) runs the
    ci-tiny pipeline; one process on the same RAREC_HOME (so the same SASRec, which the 2-process run trained
    data-parallel and rank 0 wrote) then gives identical per-user ranks for every method, trained ones included;
    and a method whose result file is deleted resumes from the 2-process training checkpoint in one process."""
    import subprocess
    import sys

    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "RAREC_HOME": str(tmp_path / "home")}
    env.pop("RAREC_MIRROR", None)  # the synthetic toy data (ci-tiny's fallback): the test needs no download
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "rarec_lite"]
    one = [sys.executable, "-m", "rarec_lite"]
    args = ["pipeline", "--config", "ci-tiny", "--out"]

    def run(cmd, out):
        proc = subprocess.run(cmd + args + [str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, out / "results" / "ci-tiny"

    log, two = run(launch, tmp_path / "two")
    assert log.count("metrics: ") == 1 and log.count("] done in") == 1  # rank 0 alone reports
    _, single = run(one, tmp_path / "one")
    a, b = json.loads((single / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2 and b["data_parallel"]["backend"] == "gloo"
    per_rank = b["data_parallel"]["encoded_per_rank"]
    assert [c["rank"] for c in per_rank] == [0, 1] and all(c["items"] > 0 and c["users"] > 0 for c in per_rank)
    # each text once: the ranks' shares add up to what one process encoded
    for key in ("items", "users"):
        assert sum(c[key] for c in per_rank) == a["data_parallel"]["encoded_per_rank"][0][key]
    ra, rb = np.load(single / "ranks.npz"), np.load(two / "ranks.npz")
    assert np.array_equal(ra["users"], rb["users"]) and set(a["methods"]) == set(b["methods"])
    for name in a["methods"]:
        assert np.array_equal(ra[name], rb[name]) and np.array_equal(ra[f"{name}_tied"], rb[f"{name}_tied"]), name
        assert a["methods"][name]["NDCG@10"] == b["methods"][name]["NDCG@10"]
    # resume with another number of processes: RA-Rec's finished 2-process checkpoint, evaluated by one process
    (two / "methods" / "rarec.json").unlink()
    log, _ = run(one, tmp_path / "two")
    assert "rarec: RA-Rec" in log and "id_translation: reusing" in log
    assert np.array_equal(np.load(two / "ranks.npz")["rarec"], rb["rarec"])
