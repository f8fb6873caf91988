"""rarec-lite: a hands-on course on LLM-based recommendation.

One module per idea of the course:

========================  ==========================================================
``rarec_lite.paths``      where data, models and results live (``RAREC_HOME``, ``RAREC_MIRROR``)
``rarec_lite.files``      atomic writes, checksums, safetensors checkpoints
``rarec_lite.data``       Amazon data, any category: readers per layout (``amazon``, ``lcrec``,
                          ``openp5``), names (``catalog``), ``split``, item ``text``, ``prepared``
``rarec_lite.metrics``    full-ranking HR@K / NDCG@K / MRR, sampled protocol, bootstrap
``rarec_lite.baselines``  MostPop, item-text nearest neighbours and late fusion of two rankers
``rarec_lite.sasrec``     the frozen ID encoder (Kang & McAuley 2018)
``rarec_lite.llm``        loading a frozen backbone in 4 bits (NF4), 8 bits or full precision
``rarec_lite.prefix``     per-layer prefix keys/values for a frozen transformer
``rarec_lite.prompts``    hard prompts: ID Direct, ID Translation, hybrid
``rarec_lite.losses``     BPR and InfoNCE
``rarec_lite.sampling``   training-data denoising and diversity
``rarec_lite.alignment``  RA-Rec: reparameterization, contextual instruction, two towers
``rarec_lite.train``      alignment training loop with resumable checkpoints
``rarec_lite.pipeline``   the end-to-end comparison behind ``rarec-lite pipeline``
``rarec_lite.distributed`` data parallelism (``accelerate launch`` / ``torchrun``): shard, gather, all-reduce
``rarec_lite.plots``      course figures
``rarec_lite.inspector``  the ipywidgets prompt inspector
``rarec_lite.progress``   progress bars that end finished in a saved notebook
========================  ==========================================================
"""

__version__ = "0.1.0"


def _silence_the_unused_bnb_kernel_message() -> None:
    """Drop exactly one log message of bitsandbytes, and nothing else it says.

    On CPUs with AVX512-BF16, importing bitsandbytes (0.50) tries to fetch a faster fused
    ``gemm_4bit_forward`` kernel for its bf16 inference path from the Hugging Face hub package
    ``kernels`` and logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module
    named 'kernels' ..." when it cannot. The course never takes that path:
    :func:`rarec_lite.llm.ensure_trainable_4bit_path` switches every 4-bit layer to the
    autograd-safe one (the fused kernel has no gradient), so installing ``kernels`` would not help
    and the message, a red box in every notebook that loads NF4, only alarms. The filter sits on
    bitsandbytes' own CPU-backend logger (created here if bitsandbytes is not imported yet).
    """
    import logging

    prefix = "Failed to load CPU gemm_4bit_forward from kernels-community"

    class _DropUnusedKernelMessage(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefix)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(type(f).__name__ == "_DropUnusedKernelMessage" for f in logger.filters):
        logger.addFilter(_DropUnusedKernelMessage())


_silence_the_unused_bnb_kernel_message()
