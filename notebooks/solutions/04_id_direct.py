"""Solution: count prompt tokens (notebook 04)."""


def count_tokens(text, tokenizer):
    return len(tokenizer(text)["input_ids"])
