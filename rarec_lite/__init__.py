"""rarec-lite: a hands-on course on LLM-based recommendation.

One module per idea of the course:

========================  ==========================================================
``rarec_lite.paths``      where data, models and results live (``RAREC_HOME``, ``RAREC_MIRROR``)
``rarec_lite.files``      atomic writes, checksums, safetensors checkpoints
``rarec_lite.data``       Amazon data, any category: readers per layout (``amazon``, ``lcrec``,
                          ``openp5``), names (``catalog``), ``split``, item ``text``, ``prepared``
``rarec_lite.metrics``    full-ranking HR@K / NDCG@K / MRR, sampled protocol, bootstrap
``rarec_lite.baselines``  MostPop and item-text nearest neighbours
``rarec_lite.sasrec``     the frozen ID encoder (Kang & McAuley 2018)
``rarec_lite.llm``        loading a frozen backbone in 4 bits (NF4), 8 bits or full precision
``rarec_lite.prefix``     per-layer prefix keys/values for a frozen transformer
``rarec_lite.prompts``    hard prompts: ID Direct, ID Translation, hybrid
``rarec_lite.losses``     BPR and InfoNCE
``rarec_lite.sampling``   training-data denoising and diversity
``rarec_lite.alignment``  RA-Rec: reparameterization, contextual instruction, two towers
``rarec_lite.train``      alignment training loop with resumable checkpoints
``rarec_lite.pipeline``   the end-to-end comparison behind ``rarec-lite pipeline``
``rarec_lite.plots``      course figures
``rarec_lite.inspector``  the ipywidgets prompt inspector
========================  ==========================================================
"""

__version__ = "0.1.0"
