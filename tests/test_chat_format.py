"""Chat template, SFT record formats, loss masks, packing and the chat loader (no training)."""

import json

import numpy as np
import pytest
import torch

from slmkit.base.config import ModelConfig
from slmkit.base.tokenizer import CHAT_TOKENS, END_OF_TURN, EOT, CharTokenizer, build_tokenizer, train_bpe
from slmkit.data.chat import ChatLoader, load_conversations, pack_rows, parse_text, render, render_text, to_example
from slmkit.data.pairs import PairLoader
from slmkit.data.sources import DataError
from slmkit.engine.trainer import eval_batches
from slmkit.model.gpt import GPT
from slmkit.model.linear_ce import IGNORE_INDEX

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there, who are you?"},
        {"role": "assistant", "content": "A small model."}, {"role": "user", "content": "Say <|end|> literally"},
        {"role": "assistant", "content": "ok\n  done."}]  # fmt: skip


@pytest.fixture(scope="module")
def bpe():
    texts = ["Hi there, who are you? A small model. Be brief. Say it literally, ok done."] * 20
    return train_bpe(texts, 303)


def tokenizers(bpe):
    gpt2 = build_tokenizer("gpt2")
    gpt2.add_special_tokens(CHAT_TOKENS)
    char = CharTokenizer(set("".join(m["content"] for m in CONV)))
    char.add_special_tokens(CHAT_TOKENS)
    return [bpe, gpt2, char]


def test_rendering_round_trips(bpe, gpt2_files):
    plain = [m for m in CONV if "<|" not in m["content"]]
    for tok in tokenizers(bpe):
        ids, mask = render(plain, tok)
        assert parse_text(tok.decode(ids)) == plain, tok.name
        assert render(parse_text(tok.decode(ids)), tok) == (ids, mask), tok.name
        assert len(ids) == len(mask) and ids[0] == tok.token_id(EOT)
        if tok.kind != "char":  # char's encode reads no special tokens
            assert ids == tok.encode(render_text(plain), allow_special=True), tok.name
    # a user typing a special-token string gets plain text, never the control token
    ids, _ = render(CONV, bpe)
    assert ids.count(bpe.token_id(END_OF_TURN)) == len(CONV)


def test_mask_covers_assistant_content_and_end_of_turn_only(bpe):
    ids, mask = render(CONV, bpe)
    kept = [i for i, m in zip(ids, mask) if m]
    replies = [m["content"] for m in CONV if m["role"] == "assistant"]
    expected = []
    for r in replies:
        expected += bpe.encode(r) + [bpe.token_id(END_OF_TURN)]
    assert kept == expected
    gen, gmask = render(CONV[:2], bpe, add_generation_prompt=True)
    assert gen[-1] == bpe.token_id("<|assistant|>") and not any(gmask)


def test_masked_positions_give_zero_loss_and_zero_gradient(bpe):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=bpe.vocab_size))
    x, y = to_example(*render(CONV, bpe))
    x, y = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    logits, loss = model(x, y)
    logits.retain_grad()
    loss.backward()
    keep = y[0] != IGNORE_INDEX
    assert keep.any() and (~keep).any()
    grad = logits.grad[0]
    assert torch.count_nonzero(grad[~keep]) == 0, "masked positions received gradient"
    assert torch.count_nonzero(grad[keep]) > 0
    manual = torch.nn.functional.cross_entropy(logits[0][keep].float(), y[0][keep])
    assert torch.allclose(loss, manual, atol=1e-6), f"max abs diff {(loss - manual).abs().item()}"
    # changing what sits at masked target positions changes nothing
    y2 = y.clone()
    y2[0, ~keep] = IGNORE_INDEX
    assert model(x, y2)[1].item() == loss.item()


def write(path, records, jsonl=True):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=2))
    return path


def test_formats_are_read_and_detected(tmp_path):
    alp = [{"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Hi", "output": "Hello"}]
    for jsonl in (True, False):
        convs = load_conversations(write(tmp_path / f"a{jsonl}.json", alp, jsonl))
        assert convs[0] == [{"role": "user", "content": "Add\n\n1 2"}, {"role": "assistant", "content": "3"}]
    msgs = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    assert load_conversations(write(tmp_path / "m.jsonl", msgs))[0][1] == {"role": "assistant", "content": "b"}
    share = [{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "r"}]}]  # fmt: skip
    assert [m["role"] for m in load_conversations(write(tmp_path / "s.jsonl", share))[0]] == [
        "system", "user", "assistant"]  # fmt: skip
    pc = [{"prompt": "p", "completion": "c"}]
    assert load_conversations(write(tmp_path / "p.jsonl", pc))[0][1]["content"] == "c"


def test_bad_records_are_counted_with_the_first_line(tmp_path):
    recs = [{"instruction": "a", "output": "b"}, {"instruction": "c"}, {"instruction": "d", "output": "e"},
            {"output": "f"}]  # fmt: skip
    with pytest.raises(DataError, match=r"2 of 4 records .* lack .*instruction and output.* line 2$"):
        load_conversations(write(tmp_path / "bad.jsonl", recs))
    with pytest.raises(DataError, match=r"2 of 4 records .* line 6$"):  # a .json array: the line its record starts on
        load_conversations(write(tmp_path / "bad.json", recs, jsonl=False))
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_conversations(tmp_path / "broken.jsonl")


def test_conversation_without_assistant_is_refused(tmp_path):
    recs = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "only me"}]}]  # fmt: skip
    with pytest.raises(DataError, match="no assistant turn .* train on nothing; the first is at line 2"):
        load_conversations(write(tmp_path / "m.jsonl", recs))


def examples(n, rng):
    out = []
    for _ in range(n):
        L = int(rng.integers(3, 12))
        x = rng.integers(5, 50, size=L).astype(np.int64)
        x[0] = 0  # each example starts with end-of-text (id 0 here)
        y = np.where(rng.random(L) < 0.5, rng.integers(5, 50, size=L), IGNORE_INDEX).astype(np.int64)
        y[-1] = 1  # end-of-turn target
        out.append((x, y))
    return out


def test_packing_keeps_examples_whole_and_targets_inside_them():
    rng = np.random.default_rng(0)
    exs = examples(30, rng)
    x, y = pack_rows(exs, np.arange(30), 16, packing=True, pad_id=0)
    assert x.shape[1] == 16 and len(x) < 30
    # walk the rows: each is a run of whole examples in order, then padding with masked targets
    i = 0
    for r in range(len(x)):
        at = 0
        while i < len(exs) and at + len(exs[i][0]) <= 16:
            ex_x, ex_y = exs[i]
            if not np.array_equal(x[r, at : at + len(ex_x)], ex_x):
                break
            assert np.array_equal(y[r, at : at + len(ex_y)], ex_y)  # the target after an example's last input
            at += len(ex_x)  # is its own end-of-turn, never the next example's first token
            i += 1
        assert (y[r, at:] == IGNORE_INDEX).all()
    assert i == len(exs)
    assert (y != IGNORE_INDEX).sum() == sum((e[1] != IGNORE_INDEX).sum() for e in exs)
    px, py = pack_rows(exs, np.arange(30), 16, packing=False, pad_id=0)
    assert len(px) == 30 and all(np.array_equal(px[i, : len(e[0])], e[0]) for i, e in enumerate(exs))


def test_chat_loader_resumes_exactly_and_covers_epochs():
    rng = np.random.default_rng(1)
    exs = examples(25, rng)
    a = ChatLoader(exs, 3, 16, seed=7)
    for _ in range(5):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = ChatLoader(exs, 3, 16, seed=7)
    b.load_state_dict(state)
    for _ in range(8):  # crosses an epoch boundary
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (3, 16)
    assert a.epoch >= 1
    with pytest.raises(DataError, match="does not fit"):
        ChatLoader(exs[:-1], 3, 16, seed=7).load_state_dict(state)


def test_long_examples_are_cut_and_empty_ones_dropped(bpe):
    ids, mask = render(CONV, bpe)
    x, y = to_example(ids, mask, max_len=20)
    assert len(x) == 20 and len(y) == 20
    assert to_example(ids, mask, max_len=3) is None  # no assistant token left


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def _chatml(bpe):
    import copy

    tok = copy.deepcopy(bpe)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.chat_template, tok.chat_stops = CHATML, ("<|im_end|>",)
    return tok


def test_the_models_own_template_masks_what_the_model_writes(bpe):
    """data.chat_template=model: the ids are the template's rendering; the mask covers each reply's content and its
    <|im_end|> (what follows the generation prompt), nothing of the system or user turns."""
    from slmkit.data.chat import render_template, render_template_masked

    tok = _chatml(bpe)
    ids, mask = render_template_masked(CONV, tok)
    assert ids == render_template(CONV, tok, add_generation_prompt=False) and len(mask) == len(ids)
    replies = tok.decode([i for i, m in zip(ids, mask) if m])
    assert replies == "A small model.<|im_end|>\nok\n  done.<|im_end|>\n", replies
    prompt = render_template(CONV[:2], tok, add_generation_prompt=True)
    assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])  # training sees what inference renders


def test_chat_template_choice_follows_the_tokenizer(bpe, tmp_path):
    """auto: the model's own template when it has one, else slm; slm on such a model drops its template (chat then
    renders what it was tuned on); model without a template is refused in one line."""
    from slmkit.base.config import DataConfig
    from slmkit.data.chat import chat_template_for, load_chat_data

    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(4)))
    cfg = DataConfig(source=str(path), format="messages", val_fraction=0.25)
    assert chat_template_for("auto", _chatml(bpe)) == "model" and chat_template_for("auto", bpe) == "slm"
    data = load_chat_data(cfg, _chatml(bpe))
    assert data.template == "model" and data.tokenizer.chat_template == CHATML and "own chat" in data.describe(64)
    forced = load_chat_data(DataConfig(**{**cfg.__dict__, "chat_template": "slm"}), _chatml(bpe))
    assert forced.template == "slm" and forced.tokenizer.chat_template is None and forced.tokenizer.has_chat_tokens
    with pytest.raises(DataError, match="data.chat_template=model needs a parent with its own chat template"):
        chat_template_for("model", bpe)


def test_an_eval_reads_a_small_val_split_once():
    """`trainer.eval_batches`: train.eval_batches, but no more batches than one pass over examples or pairs (the same
    count on every rank); a token loader, which draws windows, keeps the configured number."""
    exs = examples(10, np.random.default_rng(2))
    chat = ChatLoader(exs, 4, 64, packing=False)  # 10 rows: 3 batches read them all
    assert chat.batches_per_pass == 3 and eval_batches(chat, 20) == 3 and eval_batches(chat, 2) == 2
    ranks = [ChatLoader(exs, 4, 64, packing=False, rank=r, world_size=3) for r in range(3)]  # 4, 3 and 3 rows
    assert [r.batches_per_pass for r in ranks] == [1, 1, 1]
    pairs = PairLoader([([i], [i + 1], [], float("nan")) for i in range(9)], 4)
    assert eval_batches(pairs, 20) == 3
    assert eval_batches(object(), 20) == 20
