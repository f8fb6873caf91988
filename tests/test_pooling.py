"""Mean pooling leaves out the special tokens a causal LM's tokenizer adds (a BOS attention sink)."""

from __future__ import annotations

import pytest
import torch

from rarec_lite import llm
from rarec_lite.alignment import TwoTower
from rarec_lite.prefix import pool


def test_pool_exclude_by_hand():
    hidden = torch.tensor([[[100.0], [1.0], [3.0], [0.0]],
                           [[100.0], [5.0], [0.0], [0.0]],
                           [[100.0], [0.0], [0.0], [0.0]]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    bos = torch.zeros(3, 4, dtype=torch.bool)
    bos[:, 0] = True
    # rows: (1+3)/2, 5/1, and a row that is only a BOS keeps it (nothing else to average)
    assert pool(hidden, mask, "mean", exclude=bos).flatten().tolist() == [2.0, 5.0, 100.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == pytest.approx([104 / 3, 52.5, 100.0])
    assert pool(hidden, mask, "last", exclude=bos).flatten().tolist() == [3.0, 5.0, 100.0]  # last ignores it
    with pytest.raises(ValueError, match="exclude"):
        pool(hidden, mask, "mean", exclude=bos[:, :3])


def test_added_special_ids_per_tokenizer_family():
    llama = llm._byte_level_tokenizer("llama")   # adds <s>, like Llama-3's <|begin_of_text|>
    gpt2 = llm._byte_level_tokenizer("gpt2")     # adds nothing, like SmolLM2 and Qwen2
    bert = llm._byte_level_tokenizer("bert")     # [CLS] ... [SEP]
    assert llama("hat")["input_ids"][0] == llama.bos_token_id == 1
    assert llm.added_special_ids(llama) == [1]
    assert llm.added_special_ids(gpt2) == []
    assert llm.added_special_ids(bert) == [1, 2]


def test_two_tower_mean_pool_leaves_the_bos_out():
    bb = llm.load_backbone("tiny-llama", quantization=None)
    texts = ["a red shoe", "gold", "a long text about hats and belts"]
    tower = TwoTower(bb, None, pooling="mean")
    final, layers = tower.encode(texts, "item", per_layer=True)
    for k, text in enumerate(texts):
        ids = bb.tokenizer(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == bb.tokenizer.bos_token_id and (ids[0, 1:] != bb.tokenizer.bos_token_id).all()
        with torch.no_grad():
            hs = bb.model(input_ids=ids, output_hidden_states=True).hidden_states
        # independent: the plain model's states, averaged over the text tokens after the BOS
        torch.testing.assert_close(final[k], hs[-1][0, 1:].mean(0), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layers[0][k], hs[0][0, 1:].mean(0), atol=1e-4, rtol=1e-4)
        with_bos = hs[-1][0].mean(0)
        assert (final[k] - with_bos).norm() > 1e-3 * with_bos.norm()  # the BOS did weigh in before


def test_encoders_keep_sentence_bert_pooling():
    bb = llm.load_backbone("tiny-bert", quantization=None)
    ids = bb.tokenizer(["a hat"], return_tensors="pt")["input_ids"]
    assert llm.pooling_exclusion(bb, ids) is None  # [CLS]/[SEP] stay in the mean, as all-MiniLM-L6-v2 was trained
    gpt2 = llm.load_backbone("tiny-gpt2", quantization=None)
    assert llm.pooling_exclusion(gpt2, gpt2.tokenizer(["a hat"], return_tensors="pt")["input_ids"]) is None
