"""GGUF export: read back with gguf's reader (names, shapes, values, metadata), a llama.cpp-convention forward
from the file's tensors against our logits (proves the RoPE permutation), refusals, and llama.cpp itself
(node-llama-cpp, installed by `make setup`) running our llama and qwen3 files."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from slmkit.base.config_files import load_config  # noqa: E402
from slmkit.base.tokenizer import CharTokenizer, train_bpe  # noqa: E402
from slmkit.model.gpt import GPT  # noqa: E402
from slmkit.runs import checkpoint as ckpt_io  # noqa: E402
from slmkit.ship.export.gguf import (  # noqa: E402
    GGUFExportError,
    check_model,
    dequantize_q8_0,
    permute_rope,
    quantize_q8_0,
    unpermute_rope,  # fmt: skip
    write_gguf,
)

LLAMA = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.n_embd=64", "model.block_size=64",
         "model.norm=rmsnorm", "model.pos_emb=rope", "model.mlp=swiglu", "model.bias=false", "model.qk_norm=false",
         "model.tie_embeddings=false", "model.norm_eps=1e-5", "train.name=gguf-test"]  # fmt: skip


GPT2_BLOCK = ("model.norm=layernorm", "model.pos_emb=learned", "model.n_kv_head=0", "model.bias=true")


@pytest.fixture(scope="module")
def tokenizer(stdlib_dir):
    return train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 400)


def make(tokenizer, *extra):
    cfg = load_config(None, [*LLAMA, f"model.vocab_size={tokenizer.vocab_size}", *extra])
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    with torch.no_grad():  # non-trivial norm weights, so a mixed-up norm would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(("attn.q.weight", "attn.k.weight")):
                p.mul_(15)  # sharp attention, so positions (hence the RoPE layout) matter
    return model, cfg


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, fields, {t.name: t for t in reader.tensors}


def as_float(t) -> np.ndarray:
    """A reader tensor as float32 with our (rows, cols) layout."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))


def test_permutation_round_trips():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(unpermute_rope(permute_rope(w, 4), 4), w)
    assert torch.equal(permute_rope(w, 4)[1], w[8])  # head 0: row 1 (pair 0, second) holds the second half's row 0


def test_q8_0_matches_ggml_reference_bytes():
    x = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block
    ours = quantize_q8_0(x)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(ours, theirs)
    assert np.abs(dequantize_q8_0(ours, 96) - x).max() < np.abs(x).max() / 127


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_reads_back_with_our_weights(tokenizer, qtype, tmp_path):
    model, cfg = make(tokenizer)
    path = write_gguf(model, tokenizer, cfg, tmp_path / "m.gguf", type=qtype)
    reader, fields, tensors = read(path)
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.context_length"] == 64 and fields["llama.rope.dimension_count"] == 16
    assert fields["llama.feed_forward_length"] == cfg.model.hidden_size
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.vocab_size and tokens[tokenizer.eot_id] == "<|endoftext|>"
    assert fields["tokenizer.ggml.token_type"][tokenizer.eot_id] == 3 and len(fields["tokenizer.ggml.merges"]) > 0
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eot_id
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer.token_id("<|end|>")
    want = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}  # fmt: skip
    assert set(tensors) == want
    sd = model.state_dict()
    V = tokenizer.vocab_size
    expect = {"token_embd.weight": sd["wte.weight"][:V], "output.weight": sd["lm_head.weight"][:V],
              "blk.1.attn_q.weight": permute_rope(sd["blocks.1.attn.q.weight"], 4),
              "blk.1.attn_k.weight": permute_rope(sd["blocks.1.attn.k.weight"], 2),
              "blk.0.ffn_down.weight": sd["blocks.0.mlp.down.weight"],
              "blk.0.attn_norm.weight": sd["blocks.0.norm1.weight"],
              "output_norm.weight": sd["norm_f.weight"]}  # fmt: skip
    for name, ours in expect.items():
        t = tensors[name]
        assert list(t.shape) == list(reversed(ours.shape)), name  # ggml order: ne0 = input features
        kind = gguf.GGMLQuantizationType
        q8 = qtype == "q8_0" and name != "output.weight"  # an untied head stays f16 in q8_0 files
        assert t.tensor_type == (kind.F32 if ours.dim() == 1 else kind.Q8_0 if q8 else kind.F16), name
        err = np.abs(as_float(t) - ours.numpy()).max()
        tol = 1e-7 if ours.dim() == 1 else (ours.abs().max().item() / 100 if q8 else 1e-3)
        assert err <= tol, (name, err)


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_pairs(x, theta):
    """llama.cpp's llama RoPE: rotate adjacent pairs (x[2i], x[2i+1]) of each head. x: (T, heads, hd)."""
    T, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)  # (hd/2,)
    ang = np.arange(T)[:, None] * inv[None, :]  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def llama_cpp_forward(tensors: dict, fields: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) computed the way llama.cpp's llama graph does, from the GGUF tensors alone."""
    W = {k: as_float(t).astype(np.float64) for k, t in tensors.items()}
    n_head, n_kv = fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]
    eps, theta = fields["llama.attention.layer_norm_rms_epsilon"], fields["llama.rope.freq_base"]
    x = W["token_embd.weight"][ids]  # (T, C)
    T, C = x.shape
    hd = C // n_head
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(fields["llama.block_count"]):
        p = f"blk.{i}."
        h = _rms(x, W[p + "attn_norm.weight"], eps)
        q = _rope_pairs((h @ W[p + "attn_q.weight"].T).reshape(T, n_head, hd), theta)
        k = _rope_pairs((h @ W[p + "attn_k.weight"].T).reshape(T, n_kv, hd), theta)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", att, v).reshape(T, C) @ W[p + "attn_output.weight"].T
        h = _rms(x, W[p + "ffn_norm.weight"], eps)
        g, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    head = W.get("output.weight", W["token_embd.weight"])
    return _rms(x, W["output_norm.weight"], eps) @ head.T


def test_gpt2_block_reads_back_as_llama_cpp_gpt2(tokenizer, tmp_path):
    model, cfg = make(tokenizer, *GPT2_BLOCK, "model.mlp=gelu_exact", "model.bias=false")
    _, fields, tensors = read(write_gguf(model, tokenizer, cfg, tmp_path / "g.gguf", type="f16"))
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.attention.layer_norm_epsilon"] > 0
    assert "gpt2.attention.head_count_kv" not in fields and "gpt2.rope.dimension_count" not in fields
    sd, V = model.state_dict(), tokenizer.vocab_size
    qkv = torch.cat([sd[f"blocks.1.attn.{x}.weight"] for x in "qkv"])
    for name, ours in {"position_embd.weight": sd["wpe.weight"], "blk.1.attn_qkv.weight": qkv,
                       "output.weight": sd["lm_head.weight"][:V], "output_norm.weight": sd["norm_f.weight"],
                       "blk.0.ffn_up.bias": torch.zeros(cfg.model.hidden_size),  # no biases here: zeros
                       "blk.0.attn_qkv.bias": torch.zeros(3 * 64)}.items():  # fmt: skip
        assert np.abs(as_float(tensors[name]) - ours.numpy()).max() <= 1e-3 * max(1.0, ours.abs().max().item()), name


@pytest.mark.parametrize("tied", [False, True])
def test_llama_cpp_conventions_reproduce_our_logits(tokenizer, tied, tmp_path):
    model, cfg = make(tokenizer, f"model.tie_embeddings={str(tied).lower()}")
    _, fields, tensors = read(write_gguf(model, tokenizer, cfg, tmp_path / "m.gguf", type="f16"))
    assert ("output.weight" in tensors) != tied
    ids = tokenizer.encode("def wrap(text, width=70):\n    return")[:20]
    ours = model(torch.tensor([ids]))[0][0, :, : tokenizer.vocab_size].detach().numpy()
    theirs = llama_cpp_forward(tensors, fields, ids)
    assert np.abs(ours - theirs).max() < 2e-2 * np.abs(ours).max(), np.abs(ours - theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.9


def test_refuses_what_llama_gguf_cannot_express(tokenizer, tmp_path):
    cfg = load_config(None, ["model.norm=layernorm", "model.mlp=gelu", "model.pos_emb=learned", "model.bias=true"])
    check_model(cfg.model)  # the GPT-2 block: llama.cpp's gpt2
    cfg = load_config(None, ["model.norm=layernorm", "model.mlp=swiglu", "model.pos_emb=rope", "model.bias=true"])
    with pytest.raises(GGUFExportError, match=r"nearest, llama: model.norm = 'layernorm'.*model.bias = True"):
        check_model(cfg.model)
    model, cfg = make(tokenizer)
    with pytest.raises(GGUFExportError, match="unknown GGUF type"):
        write_gguf(model, tokenizer, cfg, tmp_path / "x.gguf", type="q4_k")


def test_cli_export_gguf(tokenizer, tmp_path, run_cli):
    model, cfg = make(tokenizer)
    run = tmp_path / "run"
    run.mkdir()
    ckpt_io.init_run_dir(run, cfg, tokenizer)
    ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, tokenizer)
    code, out, err = run_cli("export", run, "--format", "gguf", "--type", "q8_0", "--out", tmp_path / "out")
    assert code == 0, err
    _, fields, tensors = read(tmp_path / "out" / "model.gguf")
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    code, _, err = run_cli("export", run, "--format", "hf", "--type", "q8_0", "--out", tmp_path / "hf")
    assert code == 2 and "--type applies to --format gguf only" in err


NODE_LLAMA_CPP = Path(__file__).resolve().parent.parent / "build" / "node" / "node_modules" / "node-llama-cpp"


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("llama", ()),
        ("qwen3", ("model.qk_norm=true",)),
        ("gpt2", (*GPT2_BLOCK, "model.mlp=gelu")),
        ("gpt2", (*GPT2_BLOCK, "model.mlp=gelu_exact", "model.bias=false", "model.tie_embeddings=true")),
    ],
    ids=["llama", "qwen3", "gpt2", "gpt2-erf-nobias-tied"],
)
def test_node_llama_cpp_runs_the_file_like_we_do(tokenizer, tmp_path, arch, extra):
    """llama.cpp itself (node-llama-cpp's prebuilt binary, installed by `make setup`) tokenizes like us and
    generates our greedy tokens from our f16 and q8_0 files, for the llama block, the QK-norm (qwen3) block and the
    GPT-2 block (also with the erf GELU, which llama.cpp computes in the tanh form, no biases and a tied head)."""
    _node_greedy_matches(tokenizer, tmp_path, arch, extra)


def test_node_llama_cpp_runs_a_char_model(stdlib_dir, tmp_path):
    """A char tokenizer (shakespeare-char, tiny) travels as byte tokens without merges: llama.cpp tokenizes our way
    and generates our greedy tokens; a character wider than a byte is refused in one line."""
    text = (stdlib_dir / "textwrap.py").read_text(encoding="utf-8")
    char = CharTokenizer(c for c in text if c.isascii())
    _node_greedy_matches(char, tmp_path, "gpt2", (*GPT2_BLOCK, "model.mlp=gelu", "tokenizer.kind=char"))
    model, cfg = make(CharTokenizer("abcé"), *GPT2_BLOCK, "model.mlp=gelu")
    with pytest.raises(GGUFExportError, match=r"1 characters that are not one printable byte \('é'\)"):
        write_gguf(model, CharTokenizer("abcé"), cfg, tmp_path / "wide.gguf")


def _node_greedy_matches(tokenizer, tmp_path, arch, extra):
    if not NODE_LLAMA_CPP.is_dir() or shutil.which("node") is None:
        pytest.fail(f"node-llama-cpp is not installed in {NODE_LLAMA_CPP.parent}: run `make setup` (it needs npm)")
    from slmkit.model.generate import generate

    model, cfg = make(tokenizer, *extra)
    text = "def wrap(text, width=70):\n    return"
    ids = tokenizer.encode(text)
    ours = list(generate(model, ids, 12, temperature=0, vocab_limit=tokenizer.vocab_size))
    (tmp_path / "request.json").write_text(json.dumps({"text": text, "ids": ids, "n": 12}))
    entry = NODE_LLAMA_CPP / "dist" / "index.js"
    script = Path(__file__).resolve().parent / "node" / "llama_cpp_greedy.mjs"
    for qtype in ("f16", "q8_0"):
        path = write_gguf(model, tokenizer, cfg, tmp_path / f"m-{qtype}.gguf", type=qtype)
        assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == arch
        proc = subprocess.run(["node", str(script), str(entry), str(path), str(tmp_path / "request.json")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        assert theirs["tokenized"] == ids
        same = next((i for i, (a, b) in enumerate(zip(theirs["greedy"], ours)) if a != b), len(ours))
        assert same >= (12 if qtype == "f16" else 6), (qtype, theirs["greedy"], ours)  # q8_0 may drift late


def _run(tmp_path, name, tokenizer, *overrides):
    cfg = load_config(None, ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
                             f"model.vocab_size={tokenizer.vocab_size}", *overrides])  # fmt: skip
    run = tmp_path / name
    run.mkdir()
    ckpt_io.init_run_dir(run, cfg, tokenizer)
    ckpt_io.save_checkpoint(run, 1, GPT(cfg.model), None, {}, cfg, tokenizer)
    return run


def test_refusals_name_what_is_possible(tokenizer, tmp_path, run_cli):
    """A refusal never sends the user to a format that refuses the same run: it names the format that exports it,
    or says none does, and the presets whose runs the asked format exports."""
    modern = ["model.norm=rmsnorm", "model.pos_emb=rope", "model.mlp=relu2", "model.qk_norm=true", "model.bias=false"]
    run = _run(tmp_path, "modern", CharTokenizer("abc \n"), *modern, "tokenizer.kind=char")  # shakespeare-char-modern
    for fmt, other in (("gguf", "hf"), ("hf", "gguf")):
        code, _, err = run_cli("export", run, "--format", fmt, "--out", tmp_path / f"modern-{fmt}")
        assert code == 2 and "model.mlp = 'relu2'" in err and "Qwen3ForCausalLM" in err, err  # the only blocker
        assert "No export format supports this model yet" in err and f"--format {other}: " in err, err
        assert "instead" not in err and not (tmp_path / f"modern-{fmt}").exists(), err  # "--format hf instead"
    assert "llama-tiny" in err and "shakespeare-char," in err  # presets that export to hf
    run = _run(tmp_path, "gpt2-style", tokenizer)  # the default model fields: GPT-2's
    assert run_cli("export", run, "--format", "gguf", "--out", tmp_path / "g")[0] == 0  # llama.cpp's gpt2
    assert run_cli("export", run, "--format", "hf", "--out", tmp_path / "h")[0] == 0
    run = _run(tmp_path, "gpt2-gqa", tokenizer, "model.n_kv_head=1")
    code, _, err = run_cli("export", run, "--format", "gguf", "--out", tmp_path / "gq")
    assert code == 2 and "model.n_kv_head = 1 (needs 0 or model.n_head" in err and "nearest, gpt2" in err, err
