"""`slm export --format hf`: transformers loads the directory, logits match ours, tokenizers encode identically."""

from __future__ import annotations

import pytest
import torch
from evalkit import LLAMA, make_dataset, make_run

from slmkit.runs.checkpoint import load_model
from slmkit.ship.export.artifact import export

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")
TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root)
    return root, {
        "gpt2": make_run(root, data, "gpt2-arch", block_size=64),
        "llama": make_run(root, data, "llama-arch", *LLAMA, block_size=64),
        "qwen2": make_run(root, data, "qwen2-arch", *LLAMA, "model.qkv_bias=true", block_size=64),
        "qwen3": make_run(root, data, "qwen3-arch", *LLAMA, "model.qk_norm=true", block_size=64),
    }


def _check_logits(run, out):
    model, tok, cfg, _ = load_model(run)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    # transformers 5.x forces Qwen2Tokenizer on qwen2 models (the model card says to load PreTrainedTokenizerFast)
    qwen2 = theirs.config.model_type == "qwen2"
    tok_class = transformers.PreTrainedTokenizerFast if qwen2 else transformers.AutoTokenizer
    assert ("PreTrainedTokenizerFast" in (out / "README.md").read_text()) == qwen2
    hf_tok = tok_class.from_pretrained(out)
    text = "def main(argv):\n    return  [x  for x in argv]  # done"
    ids = tok.encode(text)
    assert hf_tok.encode(text) == ids and hf_tok.decode(ids) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == tok.special_tokens["<|endoftext|>"]
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (model(x)[0][..., : cfg.model.vocab_size] - theirs(x).logits).abs().max().item()
    assert diff <= TOL, f"max abs logit diff {diff:.3e}"
    assert theirs.config.vocab_size == cfg.model.vocab_size  # padded rows cut
    return theirs


@pytest.mark.slow
def test_gpt2_architecture_exports_to_gpt2lmheadmodel(runs, run_cli):
    root, r = runs
    code, out, err = run_cli("export", r["gpt2"], "--format", "hf", "--out", root / "hf-gpt2")
    assert code == 0, err
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (root / "hf-gpt2" / f).is_file(), f
    assert type(_check_logits(r["gpt2"], root / "hf-gpt2")).__name__ == "GPT2LMHeadModel"


@pytest.mark.slow
def test_llama_architecture_exports_to_llamaforcausallm(runs):
    root, r = runs
    out = export(r["llama"], root / "hf-llama")
    assert type(_check_logits(r["llama"], out)).__name__ == "LlamaForCausalLM"


def test_existing_out_needs_force(runs, run_cli):
    root, r = runs
    (root / "taken").mkdir()
    (root / "taken" / "x").write_text("keep me")
    code, _, err = run_cli("export", r["gpt2"], "--out", root / "taken")
    assert code == 2 and "--force" in err and (root / "taken" / "x").read_text() == "keep me"
    code, _, err = run_cli("export", r["gpt2"], "--out", root / "elsewhere", "--format", "onnx")
    assert code == 2 and "unknown export format 'onnx'" in err and not (root / "elsewhere").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch,cls", [("qwen2", "Qwen2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM")])
def test_qkv_bias_and_qk_norm_blocks_export_to_qwen(runs, arch, cls):
    root, r = runs
    out = export(r[arch], root / f"hf-{arch}")
    assert type(_check_logits(r[arch], out)).__name__ == cls


def test_configs_without_an_hf_class_are_refused_naming_the_field(runs):
    from slmkit.base.config import ModelConfig
    from slmkit.model.hf_config import HFConversionError, hf_architecture

    assert hf_architecture(ModelConfig()) == "gpt2"
    with pytest.raises(HFConversionError, match=r"model.mlp = 'relu2' \(GPT2LMHeadModel needs 'gelu' or 'gelu_exact"):
        hf_architecture(ModelConfig(mlp="relu2"))
    modern = dict(norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True)
    assert hf_architecture(ModelConfig(pos_emb="rope", **modern)) == "qwen3"
    with pytest.raises(HFConversionError, match=r"model.pos_emb = 'learned' \(Qwen3ForCausalLM needs 'rope'\)"):
        hf_architecture(ModelConfig(pos_emb="learned", **modern))
    with pytest.raises(HFConversionError, match="model.norm_position"):
        hf_architecture(ModelConfig(norm_position="post"))


def test_gpt2_and_char_tokenizers_become_hf_tokenizers(gpt2_files):
    from slmkit.base.tokenizer import CharTokenizer, build_tokenizer
    from slmkit.model.hf_tokenizer import hf_tokenizer

    texts = ["Hello world!  It's 2024,\n\tünïcödé 日本 🤖 're 's", "   spaces   ", "x" * 50]
    gpt2 = build_tokenizer("gpt2")
    hf_gpt2 = hf_tokenizer(gpt2, 1024)
    assert all(hf_gpt2.encode(t) == gpt2.encode(t) for t in texts)
    char = CharTokenizer("abc \n\td")
    hf_char = hf_tokenizer(char, 64)
    s = "ab c\n\tda"
    assert hf_char.encode(s) == char.encode(s) and hf_char.decode(hf_char.encode(s)) == s


# ---------------------------------------------------------------------------------------------------------
# Chat runs: the template and the end-of-turn token


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Repeat the word stone 2 times."},
    {"role": "assistant", "content": "stone stone"},
]


def test_chat_run_exports_its_template_and_end_of_turn(runs):
    """An SFT child exports with the `slm` chat template (the GGUF export's text, rendering what slmkit.data.chat
    renders) and <|end|> among the eos ids."""
    import json

    from sft_helpers import SMALL_SFT, write_alpaca

    from slmkit.data.chat import render, render_text
    from slmkit.model.hf_tokenizer import CHAT_TEMPLATE
    from slmkit.ship.export import gguf
    from slmkit.ship.finetune import sft

    root, r = runs
    child = sft(r["llama"], write_alpaca(root / "alpaca.json", 24), [*SMALL_SFT, "train.name=chat"], progress=False)
    out = export(child, root / "hf-chat")
    _, tok, _, _ = load_model(child)
    assert tok.has_chat_tokens and gguf.CHAT_TEMPLATE is CHAT_TEMPLATE  # one template text for both formats
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.apply_chat_template(CHAT, tokenize=False) == render_text(CHAT)
    for msgs, prompt in ((CHAT, False), (CHAT[:2], True)):
        ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=prompt, tokenize=True, return_dict=False)
        assert ids == render(msgs, tok, add_generation_prompt=prompt)[0]
    end, eot = tok.token_id("<|end|>"), tok.token_id("<|endoftext|>")
    for name in ("generation_config.json", "config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == [eot, end], name


def rig_chat_chain(model, tokenizer, a: int, b: int) -> None:
    """Make `model` (LLaMA-style, untied) reply [a, b, <|end|>] greedily to any chat prompt, then a, b, <|end|> again:
    every block's output is zeroed, so the logits depend on the last token only, and the embedding and head rows of
    <|assistant|>, a, b, <|end|> are unit vectors chaining them."""
    assistant, end = tokenizer.token_id("<|assistant|>"), tokenizer.token_id("<|end|>")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.o.weight.zero_()
            block.mlp.down.weight.zero_()
        model.lm_head.weight.zero_()
        basis = torch.eye(model.config.n_embd)
        for k, (tok_in, tok_out) in enumerate(((assistant, a), (a, b), (b, end), (end, a))):
            model.wte.weight[tok_in] = basis[k]
            model.lm_head.weight[tok_out] += basis[k]


def _rigged_chat_run(root, tokenizer, a: int, b: int):
    from slmkit.base.config_files import load_config
    from slmkit.model.gpt import GPT
    from slmkit.runs import checkpoint as ckpt_io

    cfg = load_config(None, [*LLAMA, "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                             f"model.vocab_size={tokenizer.vocab_size}", "train.name=rigged"])  # fmt: skip
    model = GPT(cfg.model).eval()
    rig_chat_chain(model, tokenizer, a, b)
    run = root / "rigged"
    run.mkdir()
    ckpt_io.init_run_dir(run, cfg, tokenizer)
    ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, tokenizer)
    return run, model


def test_generate_stops_at_end_of_turn(tmp_path, stdlib_dir):
    from slmkit.base.tokenizer import train_bpe
    from slmkit.model.generate import generate

    tokenizer = train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 400)
    a, b = 100, 101
    end = tokenizer.token_id("<|end|>")
    run, model = _rigged_chat_run(tmp_path, tokenizer, a, b)
    prompt = tokenizer.encode("<|endoftext|><|user|>hi<|end|><|assistant|>", allow_special=True)
    assert list(generate(model, prompt, 6, temperature=0, vocab_limit=tokenizer.vocab_size)) == [a, b, end] * 2
    out = export(run, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)  # fmt: skip
    assert ids == prompt
    x = torch.tensor([ids])
    new = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)[0, len(ids) :]
    assert new.tolist() == [a, b, end]


# ---------------------------------------------------------------------------------------------------------
# Context length and the model card


def test_learned_positions_context_is_stated_and_generation_stays_inside_it(runs):
    import json

    root, r = runs
    out = export(r["gpt2"], root / "hf-gpt2-context")
    _, tok, cfg, _ = load_model(r["gpt2"])
    n = cfg.model.block_size
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert theirs.config.n_positions == theirs.config.max_position_embeddings == n
    assert theirs.generation_config.max_length == n
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == n
    card = (out / "README.md").read_text()
    assert f"Context length: {n} tokens" in card and f"cannot exceed {n} tokens" in card and "slm sample" in card
    prompt = tok.encode("def main(argv):\n    return [x for x in argv]\n" * 10)[: n - 4]
    x = torch.tensor([prompt])
    full = theirs.generate(x, attention_mask=torch.ones_like(x), do_sample=False)  # the default length: the context
    assert full.shape[1] == n
    llama_card = (export(r["llama"], root / "hf-llama-context") / "README.md").read_text()
    assert f"Context length: {n} tokens" in llama_card and "RoPE" in llama_card and "cannot exceed" not in llama_card


# ---------------------------------------------------------------------------------------------------------
# Which presets export to which format


def _tiny_run_like(preset: str, root, tokenizers: dict):
    """A one-layer run with `preset`'s architecture fields and a tokenizer of its kind (a small bpe for gpt2: the
    checks treat both byte-level BPE kinds alike)."""
    from slmkit.base.config_files import load_config
    from slmkit.model.gpt import GPT
    from slmkit.runs import checkpoint as ckpt_io

    base = load_config(preset)
    kind = "char" if base.tokenizer.kind == "char" else "bpe"
    tokenizer = tokenizers[kind]
    kv = "1" if base.model.kv_heads != base.model.n_head else "0"
    cfg = load_config(preset, ["model.n_layer=1", "model.n_head=2", f"model.n_kv_head={kv}", "model.n_embd=32",
                               "model.mlp_hidden=0", "model.block_size=16", f"model.vocab_size={tokenizer.vocab_size}",
                               f"tokenizer.kind={'char' if kind == 'char' else 'bpe:400'}"])  # fmt: skip
    run = root / preset
    run.mkdir()
    ckpt_io.init_run_dir(run, cfg, tokenizer)
    ckpt_io.save_checkpoint(run, 1, GPT(cfg.model), None, {}, cfg, tokenizer)
    return run


def test_presets_list_the_formats_their_runs_export_to(run_cli, tmp_path, stdlib_dir):
    """`slm config presets` shows per preset the formats that really export a run of it (tried here), and no
    refusal points at a format that refuses the same run."""
    pytest.importorskip("gguf")
    from slmkit.base.errors import SlmError
    from slmkit.base.tokenizer import CharTokenizer, train_bpe

    code, out, _ = run_cli("config", "presets")
    assert code == 0
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert (
        listed["llama-tiny"] == "hf,gguf,sentence-transformers"
        and listed["gpt2-124m"] == "hf,gguf,sentence-transformers"
    )
    assert listed["shakespeare-char-modern"] == "hf,gguf,sentence-transformers"  # Qwen3's block, ASCII chars
    text = (stdlib_dir / "textwrap.py").read_text(encoding="utf-8")
    tokenizers = {"bpe": train_bpe([text], 400), "char": CharTokenizer(text)}
    for preset, formats in listed.items():
        run = _tiny_run_like(preset, tmp_path, tokenizers)
        works = []
        for fmt in ("hf", "gguf", "sentence-transformers"):
            try:
                export(run, tmp_path / "out" / preset / fmt, format=fmt)
                works.append(fmt)
            except SlmError as e:
                assert "--format hf instead" not in str(e), e
        assert (",".join(works) or "none") == formats, preset


def test_presets_listing_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from slmkit.cli import main; main(['config', 'presets']); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "False", proc.stderr
