"""Solution: where the ID Translation prompt overflows (notebook 05).

Uses `chain`, `window`, `prompts` and `bb` from the notebook.
"""
token_counts = []  # token_counts[n] = tokens for chain[:n]
first_overflow = None
for n in range(len(chain) + 1):  # noqa: F821
    token_counts.append(prompts.id_translation_user(chain[:n], bb.tokenizer).tokens_needed)  # noqa: F821
    if token_counts[-1] > window:  # noqa: F821
        first_overflow = n
        break
