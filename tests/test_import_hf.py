"""`slm import-hf`: tiny random HF GPT-2, LLaMA, Qwen2, Qwen3 and Phi-3 checkpoints saved offline become runs with
the same logits; what we cannot represent is refused naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.base.tokenizer import train_bpe
from slmkit.model.hf_tokenizer import hf_tokenizer
from slmkit.runs.checkpoint import load_model

transformers = pytest.importorskip("transformers")
TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["def f(x):\n    return x * 2\n" * 50, "hello world, hello there"], 300)


def _save(model, tokenizer, path):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    hf_tokenizer(tokenizer, 64).save_pretrained(path)
    return model.eval()


def _gpt2(tokenizer, path):
    cfg = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return _save(transformers.GPT2LMHeadModel(cfg), tokenizer, path)


LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
"""The tiny shape every LLaMA-family test checkpoint shares (GQA: 4 query heads, 2 key-value heads)."""


def _llama_like(family: str, tokenizer, path, **kwargs):
    """A tiny random `family` (Llama, Qwen2, Qwen3, Phi3) checkpoint saved offline with our tokenizer."""
    config = getattr(transformers, f"{family}Config")(vocab_size=tokenizer.vocab_size, **LLAMA_LIKE, **kwargs)
    return _save(getattr(transformers, f"{family}ForCausalLM")(config), tokenizer, path)


def _llama(tokenizer, path):
    return _llama_like("Llama", tokenizer, path, tie_word_embeddings=False, rope_theta=10000.0)


def _qwen2(tokenizer, path):  # biases on q, k, v
    return _llama_like("Qwen2", tokenizer, path, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6)


def _qwen3(tokenizer, path):  # RMSNorm on each head's q and k
    return _llama_like("Qwen3", tokenizer, path, head_dim=8, tie_word_embeddings=True, rope_theta=1e6,
                       rms_norm_eps=1e-6)  # fmt: skip


def _phi3(tokenizer, path):  # fused qkv_proj and gate_up_proj
    return _llama_like("Phi3", tokenizer, path, original_max_position_embeddings=64, sliding_window=None,
                       pad_token_id=0, bos_token_id=0, eos_token_id=0)  # fmt: skip


@pytest.mark.parametrize("build", [_gpt2, _llama, _qwen2, _qwen3, _phi3])
def test_imported_run_matches_the_hf_model(build, tokenizer, tmp_path, run_cli):
    theirs = build(tokenizer, tmp_path / "hf")
    code, out, err = run_cli("import-hf", tmp_path / "hf", "--out", tmp_path / "runs" / "imported")
    assert code == 0, err
    model, tok, cfg, _ = load_model(tmp_path / "runs" / "imported")
    ids = tok.encode("def f(x):\n    return hello")
    assert tok.fingerprint == tokenizer.fingerprint
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (model(x)[0][..., : cfg.model.vocab_size] - theirs(x).logits).abs().max().item()
    assert diff <= TOL, f"max abs logit diff {diff:.3e}"
    info = json.loads((tmp_path / "runs" / "imported" / "run.json").read_text())
    assert info["name"] == "imported" and info["status"] == "finished"
    from slmkit.model.generate import sample_text

    assert isinstance(sample_text(model, tok, "def ", max_new_tokens=5, seed=1), str)  # it can be sampled


def test_unsupported_architecture_is_refused(tmp_path, run_cli):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code, _, err = run_cli("import-hf", tmp_path / "bert", "--out", tmp_path / "runs" / "b")
    assert code == 2 and "unsupported Hugging Face architecture 'bert'" in err
    assert not (tmp_path / "runs" / "b").exists()
    code, _, err = run_cli("import-hf", tmp_path / "nothing", "--out", tmp_path / "runs" / "c")
    assert code == 2 and "config.json" in err


@pytest.mark.parametrize("field,value,named", [("use_sliding_window", True, "sliding-window"),
                                               ("head_dim", 16, "head_dim 16"),
                                               ("attention_bias", True, "attention_bias=true")])  # fmt: skip
def test_qwen3_features_we_do_not_implement_are_refused(field, value, named, tokenizer, tmp_path, run_cli):
    _qwen3(tokenizer, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, field: value}))
    code, _, err = run_cli("import-hf", tmp_path / "hf", "--out", tmp_path / "runs" / "q")
    assert code == 2 and named in err and "Qwen3ForCausalLM" in err, err
    assert not (tmp_path / "runs" / "q").exists()


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def _import_chatml_llama(tokenizer, tmp_path, run_cli):
    """A tiny Llama with ChatML's special tokens and template saved as an HF dir, imported as runs/chatml; its HF
    tokenizer."""
    theirs = _llama(tokenizer, tmp_path / "hf")
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    hf_tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"})
    hf_tok.chat_template = CHATML
    theirs.resize_token_embeddings(len(hf_tok))
    theirs.save_pretrained(tmp_path / "hf")
    hf_tok.save_pretrained(tmp_path / "hf")
    assert run_cli("import-hf", tmp_path / "hf", "--out", tmp_path / "runs" / "chatml")[0] == 0
    return hf_tok


def test_an_imported_chat_template_is_used_by_chat_and_the_server(tokenizer, tmp_path, run_cli):
    """A model's own chat template (here ChatML with its special tokens) survives import, renders a conversation as
    transformers' apply_chat_template does, stops replies at its eos, and goes back out with an HF export."""
    from slmkit.data.chat import reply_stops
    from slmkit.ship.chat import ChatSession
    from slmkit.ship.serve.protocol import render_chat

    hf_tok = _import_chatml_llama(tokenizer, tmp_path, run_cli)
    model, tok, _, _ = load_model(tmp_path / "runs" / "chatml")
    assert tok.chat_template == CHATML and tok.chat_stops == ("<|im_end|>",)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x): return?"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = hf_tok(text, add_special_tokens=False).input_ids
    session = ChatSession(model, tok, system="Be brief.")
    session.history = messages[1:]
    assert session.prompt_ids() == want
    ids, stops, _ = render_chat(messages, tok)
    assert ids == want and stops == reply_stops(tok) and tok.token_id("<|im_end|>") in stops
    assert run_cli("export", tmp_path / "runs" / "chatml", "--format", "hf", "--out", tmp_path / "back")[0] == 0
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "back").chat_template == CHATML


def test_sft_of_an_imported_chat_model_uses_its_own_template(tokenizer, tmp_path, run_cli):
    """data.chat_template=auto on a model with its own template: the child keeps the template and the vocabulary (no
    slm chat tokens added), its replies are rendered as the model's; slm instead drops the template from the child."""
    from slmkit.data.chat import prompt_for_reply
    from slmkit.runs import checkpoint as ckpt_io
    from slmkit.ship.finetune import sft

    hf_tok = _import_chatml_llama(tokenizer, tmp_path, run_cli)
    data = tmp_path / "sft.jsonl"
    conv = [{"role": "user", "content": "double x"}, {"role": "assistant", "content": "return x * 2"}]
    data.write_text("".join(json.dumps({"messages": conv}) + "\n" for _ in range(8)))
    small = ["train.max_steps=2", "train.eval_every=2", "train.eval_batches=1", "train.batch_size=2"]
    own = sft(tmp_path / "runs" / "chatml", data, [*small, "train.name=own"], progress=False)
    _, tok, _, _ = ckpt_io.load_model(own)
    assert tok.chat_template == CHATML and tok.vocab_size == len(hf_tok)
    assert ckpt_io.read_run_config(own).data.chat_template == "auto"
    assert tok.decode(prompt_for_reply(conv[:1], tok)).endswith("<|im_start|>assistant\n")
    slm_run = sft(tmp_path / "runs" / "chatml", data, [*small, "train.name=slm", "data.chat_template=slm"],
                  progress=False)  # fmt: skip
    _, tok, _, _ = ckpt_io.load_model(slm_run)
    assert tok.chat_template is None and tok.has_chat_tokens
    assert tok.decode(prompt_for_reply(conv[:1], tok)).endswith("<|assistant|>")


def test_compare_an_imported_run_with_its_hf_original(tokenizer, tmp_path, run_cli):
    """`slm compare` takes an imported run beside the HF directory it came from: the same weights write the same
    text and give every generation the same perplexity."""
    from slmkit.study.compare import compare

    _gpt2(tokenizer, tmp_path / "hf")
    assert run_cli("import-hf", tmp_path / "hf", "--out", tmp_path / "runs" / "imported")[0] == 0
    res = compare([tmp_path / "runs" / "imported", tmp_path / "hf"], ["def f(x):"], tmp_path / "cmp", seeds=(1,),
                  max_new_tokens=8)  # fmt: skip
    imported, original = res["rows"]
    assert imported["text"] == original["text"]
    for row in res["rows"]:
        assert row["ppl"]["imported"] == pytest.approx(row["ppl"]["hf"], rel=1e-4)
    assert "| ppl imported | ppl hf |" in (tmp_path / "cmp" / "compare.md").read_text()
