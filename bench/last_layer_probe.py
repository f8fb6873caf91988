"""Soft prompts in the LAST layer only, the frozen layers below cached once: what training does to full ranking.

An experiment behind README "Results" (RA-Rec, point 6), not part of the package: it reuses the package's
pieces (``Experiment``, ``RAAlignment``, the gated-attention hooks of ``rarec_lite.prefix``) on a top-K
view of the backbone. With soft prompts only in the top ``K`` layers, the text's states entering layer
``L - K`` do not depend on any trainable parameter, so they are computed once (fp16, in
``$PROBE_OUT/inputs``, default ``results/last-layer-probe``) and every training step runs the top ``K`` layers only (one layer: ~1.4 s for 32
pairs + 256 negatives with gradient, one CPU thread). It trains and then ranks the main job's 2,000
evaluation users against all 23,033 items (full ranking, expected ties) and saves the ranks, so that
they can be paired with ``results/cpu-quick/ranks.npz`` of the main job.

Options as ``key=value`` (defaults below in ``A``): ``K`` prompt layers, ``steps``, ``B`` pairs a step,
``neg`` negatives a step (encoded with gradient), ``lr`` / ``gate_lr``, ``instr`` instruction slots,
``gate0`` starting gate, ``loss`` (``bpr`` | ``softmax``), ``inv_t`` softmax inverse temperature,
``negpop=1`` popularity-sampled negatives with the logQ correction (Yi et al. 2019), ``nsamp``
training pairs (denoised + diversified validation pairs, as the pipeline's), ``plain=1`` without
data construction, ``restat`` steps between recomputing the standardisation statistics,
``fixgate=item`` (or ``user``, ``user,item``) keeps that tower's gates where they start, ``direct=1`` the ID mapped straight to the value (no layer norm / v_proj), ``sweep=g1,g2`` evaluate
untrained gates, ``evalevery`` steps between evaluations, ``iso=1`` the isometric start of the last layer's map
(``instr=0``; the package's ``TwoTower.init_isometric_reparameterization``; ``isoplain=1`` its map until
session 11, ``W = V_d`` without the singular values divided out), ``ustd`` the user tower's statistics
(``tower``: its own mean and sigma; ``item``: the items'; ``mean``: its own mean, the items' sigma; ``textmean``:
the users' text-only mean, the items' sigma, the package's ``user_statistics = "text"``), ``quant`` the LLM's precision (``none`` = fp32, the default; ``auto`` as ``cpu-quick``), ``split=valid`` scores the same users' validation items instead of their test items (history ``s[:-2]``,
target ``s[-2]``: a held-out choice of e.g. the starting gate), ``decomp=1`` splits the
untrained scores into the text part and the ID part (gated minus gate-0 states) and prints each, their sums and
late fusions (README "Results", point 8).

Usage (after the main job, whose catalogue cache in ``$MAIN_OUT``, default ``results/cpu-quick``, is reused)::

    OMP_NUM_THREADS=1 python bench/last_layer_probe.py steps=200 nsamp=12000 evalevery=100 \
        loss=softmax negpop=1 inv_t=20 restat=10 name=k1logq
"""
import os, sys, time, json, copy, contextlib, dataclasses, types
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(int(os.environ.get("NT", "1")))
from rarec_lite.pipeline import load_config, Experiment, METHODS
from rarec_lite.alignment import RAAlignment, TwoTower
from rarec_lite.prefix import forward_with_prefix, pool, _gated_prefix_hooks, prefix_key_values
from rarec_lite.llm import pooling_exclusion
from rarec_lite.metrics import metrics_from_ranks
from rarec_lite.losses import bpr_loss, sampled_softmax_loss

A = dict(K=1, steps=600, B=32, neg=256, lr=1e-3, gate_lr=1e-2, instr=4, gate0=0.5, loss="bpr", wd=0.0,
         restat=50, seed=0, plain=0, direct=0, vscale=1.0, sweep="", inv_t=1.0, nsamp=2400, negpop=0, fixgate="", name="k1", evalevery=0, scale=0.0, tie=1, iso=0, isoplain=0, decomp=0, ustd="tower", split="test", quant="none")
for kv in sys.argv[1:]:
    k, v = kv.split("=");  A[k] = type(A[k])(v) if not isinstance(A[k], str) else v
print(A, flush=True)
t0 = time.time()
OUT = Path(os.environ.get("PROBE_OUT", "results/last-layer-probe")); CACHE = OUT / "inputs"
CACHE.mkdir(parents=True, exist_ok=True)
MAIN = Path(os.environ.get("MAIN_OUT", "results/cpu-quick"))  # the main job: its catalogue cache is reused
cfg = load_config("cpu-quick"); cfg["train"]["samples"] = A["nsamp"]
cfg["llm"]["quantization"] = A["quant"]  # fp32 by default, as the cached layer inputs in $PROBE_OUT/inputs were made
out = OUT / "run"; (out / "cache").mkdir(parents=True, exist_ok=True)
for f in ["item_text_states.safetensors", "text_cache_constructed.safetensors"]:
    if not (out / "cache" / f).exists() and (MAIN / "cache" / f).exists(): os.symlink((MAIN / "cache" / f).resolve(), out / "cache" / f)
exp = Experiment(cfg, out, progress=False); exp.load_data(); exp.load_sasrec()
if A["split"] == "valid":  # the same users' validation item (history s[:-2], target s[-2]): a held-out choice
    exp.eval_histories = [np.asarray(exp.split.valid_history[u]) for u in exp.eval_users]
    exp.eval_targets = np.asarray([exp.split.valid_target[u] for u in exp.eval_users])
m = METHODS["rarec"]; bb = exp.backbone; L = bb.info.num_layers; K = A["K"]; H = bb.info.hidden_size
llm = cfg["llm"]; UB, IB = int(llm["user_max_tokens"]), int(llm["item_max_tokens"])
zs = TwoTower(bb, None, exp.pooling)

@torch.no_grad()
def cache_inputs(texts, maxtok, tag):
    p = CACHE / f"{tag}_K{K}.pt"
    if p.exists(): return torch.load(p, weights_only=True)
    xs, ms, ids_ = [], [], []
    T = 0
    for s in range(0, len(texts), 64):
        ids, mask = zs.tokenize(texts[s:s + 64], maxtok)
        h = forward_with_prefix(bb, ids, mask, None)
        xs.append(h[L - K].half()); ms.append(mask); ids_.append(ids)
    T = max(x.shape[1] for x in xs)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, 0, 0, T - t.shape[1]) if t.dim() == 3 else (0, T - t.shape[1]), value=v)
    d = {"x": torch.cat([pad(x, 0) for x in xs]), "mask": torch.cat([pad(x, 0) for x in ms]),
         "ids": torch.cat([pad(x, 0) for x in ids_])}
    torch.save(d, p); print(f"cached {tag}: {tuple(d['x'].shape)} {time.time()-t0:.0f}s", flush=True)
    return d

samples, _ = exp.samples(not A["plain"])
train_prompts = [exp.user_prompt(m.prompts, s.user, s.history, UB).text for s in samples]
item_prompts = exp.item_prompts(m.prompts)
uniq = list(dict.fromkeys(item_prompts)); row = {t: k for k, t in enumerate(uniq)}
item_row = torch.as_tensor([row[t] for t in item_prompts])
C_tr = cache_inputs(train_prompts, UB, "train_users" + ("_plain" if A["plain"] else "") + (f"_{A['nsamp']}" if A["nsamp"] != 2400 else ""))
C_it = cache_inputs(uniq, IB, "items")
eval_prompts = [p.text for p in exp.eval_prompts(m)]
C_ev = cache_inputs(eval_prompts, UB, "eval_users" if A["split"] == "test" else "valid_users")
st_prompts, st_hist = exp.stats_prompts(m.prompts)
C_st = cache_inputs(st_prompts, UB, "stats_users")

E = exp.sasrec.item_embeddings().detach().float()
U_tr = exp.user_id_embeddings([np.asarray(s.history) for s in samples]).detach().float()
U_ev = exp.user_id_embeddings(exp.eval_histories).detach().float()
U_st = exp.user_id_embeddings(st_hist).detach().float()
tgt = torch.as_tensor([s.target for s in samples])

# the top-K view of the backbone
hf = bb.model
view_model = copy.copy(hf); view_model._modules = dict(hf._modules)
view_model.layers = torch.nn.ModuleList(list(hf.layers)[L - K:])
view = types.SimpleNamespace(info=dataclasses.replace(bb.info, num_layers=K), model=view_model, tokenizer=bb.tokenizer)
al = RAAlignment(view.info, E.shape[1], num_instruction_tokens=A["instr"], use_instruction=A["instr"] > 0,
                 last_layer_gate=A["gate0"], tie_init=bool(A["tie"]))
if A["scale"] > 0:
    with torch.no_grad():
        for t in al.reparam:
            for lin in al.reparam[t]: lin.weight.mul_(A["scale"])
al.gate_offset = 0.0  # open (no warm-up schedule in this prototype)
nkv, hd = bb.info.num_kv_heads, bb.info.head_dim
if A["direct"]:
    assert A["instr"] == 0
    lay = view_model.layers[-1]; attn = lay.self_attn
    with torch.no_grad():
        W = al.reparam["user"][0].weight
        e_rms = (E @ W.T).pow(2).mean(1).sqrt().mean()
        V0 = attn.v_proj.weight @ (lay.input_layernorm.weight[:, None] * W) / e_rms * A["vscale"]
    al.vmap = torch.nn.ModuleDict({t: torch.nn.Linear(E.shape[1], nkv * hd) for t in ("user", "item")})
    with torch.no_grad():
        for t in al.vmap: al.vmap[t].weight.copy_(V0); al.vmap[t].bias.zero_()
    del al.reparam
    print("direct V init", V0.shape, flush=True)

def encode(C, rows, tower, emb, grad=True):
    x = C["x"][rows].float(); mask = C["mask"][rows]; ids = C["ids"][rows]
    T = int(mask.sum(1).max()); x, mask, ids = x[:, :T], mask[:, :T], ids[:, :T]
    gate = al.prefix_gate(tower)
    if A["direct"]:
        v = al.vmap[tower](emb).view(len(emb), nkv, 1, hd)
        kv = [(torch.zeros_like(v), v)]
    else:
        prefixes = al.prefixes(tower, emb)
        kv = [prefix_key_values(view, l, d, rotary=False) for l, d in enumerate(prefixes)]
    groups = al.prefix_groups or (kv[0][1].shape[2],)  # the instruction's own softmax, or one over every slot
    hs = _gated_prefix_hooks(view, kv, gate if gate.dim() == 2 else gate[:, None], groups)
    try:
        o = view_model(inputs_embeds=x, attention_mask=mask, output_hidden_states=True)
    finally:
        for h in hs: h.remove()
    return pool(o.hidden_states[-1], mask, how=exp.pooling, exclude=pooling_exclusion(bb, ids)).float()

@torch.no_grad()
def encode_all(C, tower, emb, rows=None, bs=256):
    n = C["x"].shape[0] if rows is None else len(rows)
    rows = torch.arange(n) if rows is None else rows
    return torch.cat([encode(C, rows[s:s + bs], tower, emb[s:s + bs]) for s in range(0, n, bs)])

@contextlib.contextmanager
def gates_closed():
    """Every gate at 0 (the text-only model) inside the block, no gradient; the gates as they were after it."""
    with torch.no_grad():
        g = {t: al.gate[t].detach().clone() for t in al.gate}
        for t in al.gate: al.gate[t].zero_()
        try:
            yield
        finally:
            for t in al.gate: al.gate[t].copy_(g[t])

# check: gate 0 == the plain model (pooled states of 8 items)
with gates_closed():
    a = encode(C_it, torch.arange(8), "item", E[:8])
    b = zs.encode(uniq[:8], "item", max_tokens=IB)
    print("gate0 check max|diff|", (a - b).abs().max().item(), "scale", b.abs().max().item(), flush=True)

TEXT_USER_MEAN = None


def stats():
    rng = np.random.default_rng(1)
    it = torch.as_tensor(np.sort(rng.choice(len(item_prompts), 4096, replace=False)))
    iv = encode_all(C_it, "item", E[it], item_row[it])
    uv = encode_all(C_st, "user", U_st)
    if A["ustd"] == "item":  # the item statistics on both sides
        return (iv.mean(0), iv.std(0)), (iv.mean(0), iv.std(0))
    if A["ustd"] == "textmean":  # the users' text-only mean (fixed), the items' sigma on both sides
        global TEXT_USER_MEAN
        if TEXT_USER_MEAN is None:
            with gates_closed():
                TEXT_USER_MEAN = encode_all(C_st, "user", U_st).mean(0)
        return (iv.mean(0), iv.std(0)), (TEXT_USER_MEAN, iv.std(0))
    if A["ustd"] == "mean":  # the users' own mean, the items' sigma on both sides
        return (iv.mean(0), iv.std(0)), (uv.mean(0), iv.std(0))
    return (iv.mean(0), iv.std(0)), (uv.mean(0), uv.std(0))

def evaluate(tag):
    tt = time.time()
    ist, ust = stats()
    items = torch.cat([encode_all(C_it, "item", E[s:s + 2048], item_row[s:s + 2048]) for s in range(0, len(item_prompts), 2048)])
    ist = (items.mean(0), items.std(0))
    if A["ustd"] != "tower": ust = (ist[0] if A["ustd"] == "item" else ust[0], ist[1])
    users = encode_all(C_ev, "user", U_ev)
    sc = ((users - ust[0]) / ust[1]) @ ((items - ist[0]) / ist[1]).T
    r, t = exp.rank(sc)
    met = metrics_from_ranks(r, [10, 100], tied=t)
    line = f"{A['name']} {tag}: HR@10 {met['HR@10']:.4f} HR@100 {met['HR@100']:.4f} NDCG@10 {met['NDCG@10']:.4f}"
    np.savez(OUT / f"ranks_{A['name']}_{tag}.npz", greater=r, tied=t)
    print(line, f"({time.time()-tt:.0f}s)", flush=True)
    return r, t, met

def rank_loss(u, v, vid, negs, nid):
    """The package's ranking losses (rarec_lite.losses), as the trainer calls them: in-batch targets + the
    step's negatives, score scale 1/H (times ``inv_t`` for the softmax), logQ with popularity negatives."""
    if A["loss"] == "bpr":
        return bpr_loss(u, v, vid, 1.0 / H, negs, nid)
    lq = (logq[vid], logq[nid]) if A["negpop"] else (None, None)
    return sampled_softmax_loss(u, v, vid, A["inv_t"] / H, negs, nid, *lq)

if A["iso"]:  # isometric start (bench/isometric_init_probe.py): W = V_d of the frozen path J, both towers
    assert K == 1 and A["instr"] == 0 and not A["direct"]
    with gates_closed():
        ist0, _ = stats()
    with torch.no_grad():
        top = TwoTower(view, al, exp.pooling)
        top.stats = {"item": ist0, "user": ist0}
        sv = top.init_isometric_reparameterization()  # the package's map (rarec_lite.alignment), on the top-K view
        W = al.reparam["user"][-1].weight
        if A["isoplain"]:  # the package's map until session 11: W = V_d (SASRec's direction k weighted by s_k^2)
            d = W.shape[1]
            for t in al.reparam: al.reparam[t][-1].weight.mul_(sv[:d] / sv[:d].mean())
    print("isometric start", tuple(W.shape), flush=True)
ist, ust = stats()
pop = np.asarray(exp.dataset.item_popularity(), dtype=np.float64) + 1.0
popq = pop / pop.sum(); logq = torch.as_tensor(np.log(popq * len(popq)), dtype=torch.float32)
if A["sweep"]:
    r, t = exp.rank(U_ev @ E.T); met = metrics_from_ranks(r, [10, 100], tied=t)
    print(f"SASRec on these targets ({A['split']}): HR@10 {met['HR@10']:.4f} HR@100 {met['HR@100']:.4f} NDCG@10 {met['NDCG@10']:.4f}", flush=True)
    for gv in [float(x) for x in A["sweep"].split(",")]:
        with torch.no_grad():
            for t in al.gate: al.gate[t].fill_(gv)
        evaluate(f"gate{gv}")
    sys.exit()
if A["decomp"]:  # where the signal goes: text part, ID part (gated minus gate-0 states) and their sums
    from rarec_lite.baselines import late_fusion
    with torch.no_grad():
        enc_items = lambda: torch.cat([encode_all(C_it, "item", E[s:s + 2048], item_row[s:s + 2048]) for s in range(0, len(item_prompts), 2048)])
        ig, ug = enc_items(), encode_all(C_ev, "user", U_ev)
        with gates_closed():
            i0, u0 = enc_items(), encode_all(C_ev, "user", U_ev)
        sd = ig.std(0); sd0 = i0.std(0)
        zt = ((u0 - i0.mean(0)) / sd0) @ ((i0 - i0.mean(0)) / sd0).T
        Du, Di = (ug - u0) / sd, (ig - i0) / sd
        idp = Du @ Di.T
        full = ((ug - ig.mean(0)) / sd) @ ((ig - ig.mean(0)) / sd).T
        sas = U_ev @ E.T
        sg = encode_all(C_st, "user", U_st)  # the statistics users (training users' validation prompts), gated
        with gates_closed():
            s0_ = encode_all(C_st, "user", U_st)
        std_rows = [("text only, user mean + item sigma", ((u0 - s0_.mean(0)) / sd0) @ ((i0 - i0.mean(0)) / sd0).T),
                    ("text only, per-tower mean + sigma", ((u0 - s0_.mean(0)) / s0_.std(0)) @ ((i0 - i0.mean(0)) / sd0).T),
                    ("full, user mean + item sigma", ((ug - sg.mean(0)) / sd) @ ((ig - ig.mean(0)) / sd).T),
                    ("full, per-tower mean + sigma", ((ug - sg.mean(0)) / sg.std(0)) @ ((ig - ig.mean(0)) / sd).T),
                    ("full, users' text-only mean + item sigma", ((ug - s0_.mean(0)) / sd) @ ((ig - ig.mean(0)) / sd).T),
                    ("text + ID part centred on users", zt + (Du - Du.mean(0)) @ Di.T)]
        cos = torch.nn.functional.normalize(Du, dim=1) @ torch.nn.functional.normalize(Di, dim=1).T
        print("norms: text z_u %.1f z_i %.1f  ID part D_u %.1f D_i %.1f" % (((u0 - i0.mean(0)) / sd0).norm(dim=1).mean(), ((i0 - i0.mean(0)) / sd0).norm(dim=1).mean(), Du.norm(dim=1).mean(), Di.norm(dim=1).mean()))
        print("item ID-part norm: cv %.3f; corr(ID-part score, SASRec) per user %.3f" % ((Di.norm(dim=1).std() / Di.norm(dim=1).mean()).item(),
              np.mean([np.corrcoef(idp[k].numpy(), sas[k].numpy())[0, 1] for k in range(0, 2000, 20)])))
        for name, sc in [("SASRec", sas), ("text only (gate 0)", zt), ("ID part alone D_u.D_i", idp), ("ID part cosine", cos),
                         ("full (what RA-Rec scores)", full), ("text + ID part, no cross terms", zt + idp),
                         ("late fusion text + ID part", late_fusion([zt, idp])), ("late fusion text + SASRec", late_fusion([zt, sas]))] + std_rows:
            r, t = exp.rank(sc); met = metrics_from_ranks(r, [10, 100], tied=t)
            print(f"| {name} | {met['HR@10']:.4f} | {met['HR@100']:.4f} | {met['NDCG@10']:.4f} |", flush=True)
    sys.exit()
if A["steps"] == 0:
    evaluate("untrained"); sys.exit()
for t in A["fixgate"].split(",") if A["fixgate"] else []:  # e.g. fixgate=item: that tower's gate stays at gate0
    al.gate[t].requires_grad_(False)
names = [(k, p) for k, p in al.named_parameters() if p.requires_grad]
opt = torch.optim.AdamW([{"params": [p for k, p in names if not k.startswith("gate")], "lr": A["lr"]},
                         {"params": [p for k, p in names if k.startswith("gate")], "lr": A["gate_lr"], "weight_decay": 0}],
                        weight_decay=A["wd"])
rng = np.random.default_rng(A["seed"]); hist = []; tt = time.time()
if A["evalevery"]: evaluate("s0")
for step in range(A["steps"]):
    f = 0.5 * (1 + np.cos(np.pi * step / A["steps"])) if step > A["steps"] // 20 else (step + 1) / (A["steps"] // 20)
    for gi, gr in enumerate(opt.param_groups): gr["lr"] = (A["lr"], A["gate_lr"])[gi] * f
    if A["restat"] and step and step % A["restat"] == 0: ist, ust = stats()
    b = torch.as_tensor(rng.choice(len(samples), A["B"], replace=False))
    if A["negpop"]:
        nid = torch.as_tensor(rng.choice(len(item_prompts), A["neg"], replace=True, p=popq))
    else:
        nid = torch.as_tensor(rng.choice(len(item_prompts), A["neg"], replace=False))
    vid = tgt[b]
    u = encode(C_tr, b, "user", U_tr[b])
    iv = encode(C_it, item_row[torch.cat([vid, nid])], "item", E[torch.cat([vid, nid])])
    zu = (u - ust[0]) / ust[1]; zi = (iv - ist[0]) / ist[1]
    loss = rank_loss(zu, zi[:len(b)], vid, zi[len(b):], nid)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(al.parameters(), 1.0); opt.step()
    hist.append(loss.item())
    if step % 50 == 0 or step == A["steps"] - 1:
        print(f"step {step} loss {np.mean(hist[-50:]):.4f} gates {[round(al.gate[t].item() if al.gate[t].dim()==0 else al.gate[t][-1].item(),3) for t in al.gate]} {time.time()-tt:.0f}s", flush=True)
    if A["evalevery"] and step and step % A["evalevery"] == 0: evaluate(f"s{step}")
evaluate("final")
print("wall", time.time() - t0)
