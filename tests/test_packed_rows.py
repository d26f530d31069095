"""Packed chat training keeps B rows (per-row, per-document masks) instead of TRL's single
padding-free row of B x L tokens with a (B x L)^2 mask: same loss and gradients."""
import pytest
import torch
from sft_helpers import tiny_model, tiny_tokenizer

from hf_nanochat.data import chat_data
from hf_nanochat.train.sft import PackedRowsCollator, tokenize_conversations


@pytest.fixture(scope="module")
def packed():
    from trl import SFTConfig, SFTTrainer

    tok = tiny_tokenizer()
    data = tokenize_conversations(chat_data.build_mixture([{"source": "arithmetic", "size": 40}], seed=0), tok)
    args = SFTConfig(output_dir="/tmp/unused_packed_rows", use_cpu=True, bf16=False, packing=True, max_length=96,
                     per_device_train_batch_size=4, report_to=[], shuffle_dataset=False)
    trainer = SFTTrainer(model=tiny_model(), args=args, train_dataset=data, processing_class=tok)
    return trainer.data_collator, [trainer.train_dataset[i] for i in range(4)]


def _loss_and_grads(model, batch):
    model.zero_grad()
    n = (batch["labels"][:, 1:] != -100).sum()
    loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"], num_items_in_batch=n).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_rows_collator_equals_trls_padding_free_row(packed):
    trl_collator, examples = packed
    one_row = trl_collator(examples)
    rows = PackedRowsCollator(trl_collator.pad_token_id)(examples)
    assert one_row["input_ids"].shape[0] == 1 and rows["input_ids"].shape[0] == 4
    assert "attention_mask" not in rows
    # the same targets: every row's documents, their first tokens never targets of the document before
    assert (rows["labels"] != -100).sum() == (one_row["labels"] != -100).sum() > 0
    assert (rows["position_ids"] == 0).sum() >= 6  # several documents (and padding) across the 4 rows
    model = tiny_model()
    a_loss, a_grads = _loss_and_grads(model, one_row)
    b_loss, b_grads = _loss_and_grads(model, rows)
    torch.testing.assert_close(b_loss, a_loss, atol=1e-6, rtol=1e-5)
    for k in a_grads:
        torch.testing.assert_close(b_grads[k], a_grads[k], atol=1e-6, rtol=1e-4)


def test_documents_in_a_row_do_not_see_each_other(packed):
    """Each document's logits in a packed row equal the document run alone (teeth: without
    position_ids the later documents see the earlier ones)."""
    trl_collator, examples = packed
    rows = PackedRowsCollator(trl_collator.pad_token_id)(examples)
    model = tiny_model().eval()
    with torch.no_grad():
        logits = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"]).logits
        leaky = model(input_ids=rows["input_ids"]).logits
        r = next(r for r in range(4) if (rows["position_ids"][r] == 0).sum() >= 3)  # a row with 2+ documents
        starts = (rows["position_ids"][r] == 0).nonzero().flatten().tolist()
        a, b = starts[1], starts[2]
        alone = model(input_ids=rows["input_ids"][r : r + 1, a:b]).logits[0]
        torch.testing.assert_close(logits[r, a:b], alone, atol=1e-5, rtol=1e-5)
        assert (leaky[r, a:b] - logits[r, a:b]).abs().max() > 1e-3


def test_real_tokens_counts_every_packed_token_and_no_padding(packed):
    """What the num_tokens metric adds per batch: TRL would count position_ids.size(1), one row."""
    trl_collator, examples = packed
    rows = PackedRowsCollator(trl_collator.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert len(set(lengths)) > 1  # rows of different lengths: the shorter ones are padded
    assert PackedRowsCollator.real_tokens(rows["position_ids"]).item() == sum(lengths)
    assert rows["position_ids"].size(1) == max(lengths) < sum(lengths)
