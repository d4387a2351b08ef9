"""Which named block architecture a ModelConfig is: a Hugging Face class (`hf_config`) or a llama.cpp architecture
(`ship/export/gguf`). Each names the ModelConfig values it requires (a value, or a tuple of the values it takes;
`n_kv_head: 0` is met by any config with one key/value head per query head, no GQA, as 0 means in ModelConfig). A
model is the first architecture whose requirements it meets, else the closest is the one whose requirements it
misses fewest of (first on ties).
"""

from __future__ import annotations

from slmkit.base.config import ModelConfig

NO_GQA = 0
"""The requirement `n_kv_head: NO_GQA`: as many key/value heads as query heads (0 or n_head)."""


def misses(cfg: ModelConfig, need: dict) -> list[str]:
    """The fields of `need` that cfg does not have."""
    out = []
    for k, v in need.items():
        ok = (
            cfg.kv_heads == cfg.n_head if k == "n_kv_head" else getattr(cfg, k) in (v if isinstance(v, tuple) else (v,))
        )
        if not ok:
            out.append(k)
    return out


def match(cfg: ModelConfig, table: dict[str, dict]) -> tuple[str | None, str, list[str]]:
    """(the architecture of `table` cfg is, or None; the closest one; the fields cfg misses of that one)."""
    found = {arch: misses(cfg, need) for arch, need in table.items()}
    exact = next((arch for arch, miss in found.items() if not miss), None)
    closest = exact or min(found, key=lambda a: len(found[a]))
    return exact, closest, found[closest]


def describe_misses(cfg: ModelConfig, need: dict, keys: list[str], who: str = "") -> str:
    """'model.k = value (WHO needs ...)' for each missed key, comma-separated."""

    def needs(k: str) -> str:
        if k == "n_kv_head" and need[k] == NO_GQA:
            return "0 or model.n_head"
        v = need[k]
        return " or ".join(map(repr, v)) if isinstance(v, tuple) else repr(v)

    subject = f"{who} needs" if who else "needs"
    return ", ".join(f"model.{k} = {getattr(cfg, k)!r} ({subject} {needs(k)})" for k in keys)
