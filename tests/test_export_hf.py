"""`slm export --format hf`: transformers loads the directory, logits match ours, tokenizers encode identically."""

from __future__ import annotations

import pytest
import torch
from evalkit import LLAMA, make_dataset, make_run

from slmkit.runs.checkpoint import load_model
from slmkit.ship.export import export

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
    }


def _check_logits(run, out):
    model, tok, cfg, _ = load_model(run)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
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


def test_configs_without_an_hf_class_are_refused_naming_the_field(runs):
    from slmkit.base.config import ModelConfig
    from slmkit.model.hf import HFConversionError, hf_architecture

    assert hf_architecture(ModelConfig()) == "gpt2"
    with pytest.raises(HFConversionError, match=r"model.mlp = 'relu2' \(GPT2LMHeadModel needs 'gelu'\)"):
        hf_architecture(ModelConfig(mlp="relu2"))
    with pytest.raises(HFConversionError, match="model.qk_norm"):
        hf_architecture(ModelConfig(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, qk_norm=True))
    with pytest.raises(HFConversionError, match="model.norm_position"):
        hf_architecture(ModelConfig(norm_position="post"))


def test_gpt2_and_char_tokenizers_become_hf_tokenizers(data_dir):
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
