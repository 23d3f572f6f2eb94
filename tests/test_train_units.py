"""Fast checks of train/: WIT loss and its normalisation, packing, formatting. No Ray."""
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from pipelines.models import resolve_model  # noqa: E402
from train import data as tdata  # noqa: E402
from train import loss as tloss  # noqa: E402
from train.packing import NO_TARGET, PROMPT, RESPONSE, BatchFeed, Packer, collate  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


def tiny_llama(vocab: int, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_hidden_layers=2,
                      intermediate_size=128, vocab_size=vocab, attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def ex(ids, n_prompt):
    return {"input_ids": list(ids), "response": [0] * n_prompt + [1] * (len(ids) - n_prompt)}


EXAMPLES = [ex(range(10, 22), 5), ex(range(30, 37), 3), ex(range(40, 59), 10), ex(range(60, 64), 2)]


# ----------------------------------------------------------------------------- loss
def direct_loss(logits_list, examples, lp, lr):
    """Reference: per example, CE of token t+1 from logits t, weighted, / #nonzero weights."""
    num, den = 0.0, 0
    for logits, e in zip(logits_list, examples):
        ids = torch.tensor(e["input_ids"])
        ce = F.cross_entropy(logits[:-1], ids[1:], reduction="none")
        w = torch.tensor([lr if r else lp for r in e["response"][1:]], dtype=torch.float32)
        num = num + (ce * w).sum()
        den += int((w > 0).sum())
    return num / den


@pytest.mark.parametrize("lp,lr", [(0.0, 1.0), (1.0, 1.0), (0.3, 1.0)])
def test_wit_loss_matches_direct_cross_entropy(lp, lr):
    torch.manual_seed(0)
    b = collate([[e] for e in EXAMPLES], pad_id=0)
    logits = torch.randn(*b["input_ids"].shape, 100)
    s, n = tloss.weighted_nll(logits, b["labels"], tloss.token_weights(b["kind"], lp, lr))
    per_ex = [logits[i, :len(e["input_ids"])] for i, e in enumerate(EXAMPLES)]
    assert n == tloss.count_targets(b["kind"], lp, lr)
    torch.testing.assert_close(s / n, direct_loss(per_ex, EXAMPLES, lp, lr))


def test_response_only_counts_response_tokens_and_eos():
    b = collate([[EXAMPLES[0]]], pad_id=0)
    # 12 tokens, 5 prompt: labels 1..11, of which 7 are response (the last is the EOS position).
    assert tloss.count_targets(b["kind"], 0.0, 1.0) == 7
    assert tloss.count_targets(b["kind"], 1.0, 1.0) == 11


def _grads(model, batches, scale_fn):
    model.zero_grad()
    for b in batches:
        w = tloss.token_weights(b["kind"], 0.0, 1.0)
        s, _ = tloss.weighted_nll(model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                                        use_cache=False).logits,
                                  b["labels"], w)
        (s * scale_fn()).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_step_normalisation_over_micro_batches_and_workers():
    """Accumulating micro-batches of unequal sizes (and averaging 2 'workers' as DDP does) equals one
    big batch normalised by its token count, not a mean of per-micro-batch means."""
    model = tiny_llama(100)
    full = collate([[e] for e in EXAMPLES], pad_id=0)
    n_all = tloss.count_targets(full["kind"], 0.0, 1.0)
    ref = _grads(model, [full], lambda: 1.0 / n_all)
    parts = [collate([[EXAMPLES[0]]], 0), collate([[EXAMPLES[1]], [EXAMPLES[2]]], 0), collate([[EXAMPLES[3]]], 0)]
    one_worker = _grads(model, parts, lambda: tloss.step_scale(n_all, 1))
    for a, b in zip(ref, one_worker):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # Two workers (micro-batches split between them), each scaled by world/N, then averaged like DDP.
    w0 = _grads(model, parts[:1], lambda: tloss.step_scale(n_all, 2))
    w1 = _grads(model, parts[1:], lambda: tloss.step_scale(n_all, 2))
    for a, g0, g1 in zip(ref, w0, w1):
        torch.testing.assert_close(a, (g0 + g1) / 2, atol=1e-6, rtol=1e-4)
    # A mean of per-micro-batch means differs (so the test has teeth).
    naive = [torch.zeros_like(g) for g in ref]
    for part in parts:
        n = tloss.count_targets(part["kind"], 0.0, 1.0)
        for acc, g in zip(naive, _grads(model, [part], lambda: 1.0 / n / len(parts))):
            acc += g
    assert not all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(ref, naive))


def test_zero_weight_batch_keeps_graph():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    s, n = tloss.weighted_nll(logits, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
    s.backward()
    assert n == 0 and logits.grad is not None


@pytest.mark.parametrize("lp,tied", [(0.0, True), (0.0, False), (0.3, True)])
def test_head_select_equals_full_projection(lp, tied):
    """Projecting only the weighted positions gives the same loss and the same gradients."""
    from train.head import HeadSelect

    model = tiny_llama(100)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    b = collate([[EXAMPLES[0], EXAMPLES[1]], [EXAMPLES[2], EXAMPLES[3]]], pad_id=0)
    w = tloss.token_weights(b["kind"], lp, 1.0)
    fwd = lambda: model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits  # noqa: E731
    s_full, n_full = tloss.weighted_nll(fwd(), b["labels"], w)
    s_full.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    keys = set(model.state_dict())
    head = HeadSelect(model)
    with head.only(w.reshape(-1) > 0):
        logits = fwd()
    assert logits.shape == (n_full, 100)
    s, n = tloss.kept_nll(logits, b["labels"], w)
    s.backward()
    assert n == n_full
    torch.testing.assert_close(s, s_full, atol=1e-5, rtol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], atol=1e-6, rtol=1e-4)
    assert fwd().shape == (*b["input_ids"].shape, 100)  # outside only(): the full projection
    assert set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="logit rows"):
        tloss.kept_nll(torch.zeros(3, 100), b["labels"], w)


# ----------------------------------------------------------------------------- packing
def test_collate_positions_labels_kinds():
    b = collate([[EXAMPLES[0], EXAMPLES[1]], [EXAMPLES[3]]], pad_id=0)
    assert b["input_ids"].shape == (2, 19)
    assert b["position_ids"][0].tolist() == list(range(12)) + list(range(7))
    assert b["position_ids"][1].tolist() == list(range(4)) + list(range(15))  # padding tail restarts
    # No label crosses an example boundary; the last token of each example predicts nothing.
    assert b["kind"][0, 11] == NO_TARGET and b["kind"][0, 18] == NO_TARGET
    assert b["labels"][0, 12].item() == 31 and b["kind"][0, 12] == PROMPT
    assert b["kind"][0, 4] == RESPONSE  # label = token 5, the first response token
    assert b["tokens"] == 23 and b["slots"] == 38
    assert (b["kind"][1, 4:] == NO_TARGET).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_separate_forwards(attn):
    model = tiny_llama(100, attn)
    row = [EXAMPLES[0], EXAMPLES[1], EXAMPLES[3]]
    b = collate([row, [EXAMPLES[2]]], pad_id=0)
    with torch.no_grad():
        # use_cache=False as in the recipe: with a KV cache transformers skips packed-sequence masking.
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        o = 0
        for e in row:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[0, o:o + n], alone, atol=1e-5, rtol=1e-4)
            o += n
        alone = model(input_ids=torch.tensor([EXAMPLES[2]["input_ids"]])).logits[0]
        torch.testing.assert_close(packed[1, :19], alone, atol=1e-5, rtol=1e-4)


def test_packer_fills_sequences():
    g = torch.Generator().manual_seed(0)
    lens = (torch.randint(20, 300, (400,), generator=g)).tolist()
    packer, bins = Packer(512), []
    for i, n in enumerate(lens):
        bins += packer.add({"input_ids": [i] * n, "response": [1] * n})
    bins += packer.flush()
    assert sorted(e["input_ids"][0] for b in bins for e in b) == list(range(400))  # each exactly once
    assert all(sum(len(e["input_ids"]) for e in b) <= 512 for b in bins)
    share = sum(lens) / (512 * len(bins))
    assert share >= 0.95, share


def test_batch_feed_resumes_exactly():
    data = [ex(range(i, i + 5 + i % 7), 2) for i in range(23)]
    source = lambda epoch, skip: iter((data if epoch % 2 == 0 else data[::-1])[skip:])  # noqa: E731
    a = BatchFeed(source, 2, Packer(24))
    for _ in range(5):
        a.next()
    state = copy.deepcopy(a.state_dict())
    expected = [a.next() for _ in range(12)]  # crosses into the next epoch
    b = BatchFeed(source, 2, Packer(24))
    b.load_state_dict(state)
    assert [b.next() for _ in range(12)] == expected


# ----------------------------------------------------------------------------- formatting
def _decode_parts(tok, e):
    resp = [i for i, r in zip(e["input_ids"], e["response"]) if r]
    prompt = [i for i, r in zip(e["input_ids"], e["response"]) if not r]
    return tok.decode(prompt), tok.decode(resp)


def test_chat_template_boundary_and_system(tok):
    row = {"instruction": "Add two numbers.", "input": "2 and 3", "output": "5", "system": "Be terse."}
    e = tdata.tokenize(tok, row, "chat", 512)
    prompt, resp = _decode_parts(tok, e)
    assert resp == "5" + tok.eos_token and e["input_ids"][-1] == tok.eos_token_id
    assert "<|im_start|>system\nBe terse." in prompt and prompt.endswith("<|im_start|>assistant\n")
    # The ids are those of the whole rendered conversation, tokenised once.
    full = tok.apply_chat_template(tdata.to_messages(row), tokenize=False).rstrip()
    assert e["input_ids"] == tok(full, add_special_tokens=False)["input_ids"]
    no_sys = tdata.tokenize(tok, dict(row, system=""), "chat", 512)
    assert "Be terse." not in tok.decode(no_sys["input_ids"])


def test_boundary_on_ids_when_bpe_merges_across_it(tok):
    # "Response:" + "\n\n" + output starting with whitespace: tokenising the prompt alone would
    # end with a different token than the full text has at that spot; offsets still split correctly.
    row = {"instruction": "Indent this.", "input": "", "output": "\n    indented", "system": ""}
    e = tdata.tokenize(tok, row, "plain", 512)
    full = tdata.render(tok, tdata.to_messages(row), "plain").rstrip()
    assert e["input_ids"] == tok(full)["input_ids"]
    prompt, resp = _decode_parts(tok, e)
    assert resp.endswith("indented" + tok.eos_token) and "### Response:" in prompt


def test_plain_template_and_messages_column(tok):
    e = tdata.tokenize(tok, {"instruction": "Say hi.", "input": "to Bob", "output": "Hi Bob"}, "plain", 512)
    prompt, resp = _decode_parts(tok, e)
    assert "### Instruction:\nSay hi." in prompt and "### Input:\nto Bob" in prompt
    assert prompt.rstrip().endswith("### Response:") and resp == "Hi Bob" + tok.eos_token
    two_par = tdata.tokenize(tok, {"instruction": "Para one.\n\nPara two.", "input": "", "output": "ok"}, "plain", 512)
    assert "### Input" not in tok.decode(two_par["input_ids"])  # a blank line is not an input block
    msgs = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}
    e = tdata.tokenize(tok, msgs, "chat", 512)
    assert _decode_parts(tok, e)[1] == "hello<|im_end|>\nciao<|im_end|>"  # every assistant turn
    assert tdata.resolve_template(tok, "auto") == "chat"


def test_truncation_keeps_prompt_and_drops_empty(tok):
    row = {"instruction": "word " * 30, "output": "answer " * 50}
    e = tdata.tokenize(tok, row, "chat", 80)
    assert len(e["input_ids"]) == 80 and any(e["response"]) and not all(e["response"])
    assert tdata.tokenize(tok, row, "chat", 40) is None


def test_missing_columns_error_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"instruction": ["a"], "input": [""]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet.*output"):
        tdata.check_columns(tdata.parquet_files(str(tmp_path)))
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "x"}]]}), tmp_path / "m.parquet")
    assert tdata.check_columns([str(tmp_path / "m.parquet")]) == ("messages", ["messages"])


def test_eval_split_is_deterministic_by_id():
    rows = [{"id": f"row{i}", "instruction": "x", "output": "y"} for i in range(2000)]
    held = [r["id"] for r in rows if tdata.is_eval(r, 0.1)]
    assert held == [r["id"] for r in rows if tdata.is_eval(dict(r, output="changed"), 0.1)]
    assert 150 < len(held) < 250
    t = pa.Table.from_pylist(rows)
    ev, tr = tdata.split_batch(t, 0.1, eval_side=True), tdata.split_batch(t, 0.1, eval_side=False)
    assert ev["id"].to_pylist() == held  # the batch split is the row split, order kept
    assert sorted(ev["id"].to_pylist() + tr["id"].to_pylist()) == sorted(r["id"] for r in rows)


# ----------------------------------------------------------------------------- LoRA
def test_lora_merge_and_adapter_roundtrip(tmp_path):
    pytest.importorskip("peft")
    from train.recipe import add_lora, merged_copy

    c = {"lora_r": 4, "lora_alpha": 8.0}
    model = add_lora(tiny_llama(100), c)
    assert 0 < sum(p.numel() for p in model.parameters() if p.requires_grad) < 20000
    with torch.no_grad():  # give the adapter a non-zero update (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        merged = merged_copy(model)
        assert type(merged).__name__ == "LlamaForCausalLM"
        torch.testing.assert_close(merged(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(input_ids=ids).logits, ref)  # the live model is untouched
    model.save_pretrained(tmp_path / "adapter")
    again = add_lora(tiny_llama(100), c, str(tmp_path / "adapter"))
    assert any(p.requires_grad for p in again.parameters())
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, ref)
