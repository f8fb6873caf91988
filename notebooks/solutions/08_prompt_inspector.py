"""Solution: a history that does not fit (notebook 08).

Uses `prompt_of` and `ds` from the notebook.
"""
overflowing_user = next(u for u in range(ds.num_users) if prompt_of(u).truncated)  # noqa: F821

# RA-Rec's hybrid hard prompt keeps only the most recent items as text, but its soft prompt is built
# from SASRec's user embedding, which read the whole history (up to max_len items): nothing is cut there.
rarec_keeps = "b"
