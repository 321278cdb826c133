"""A tiny LoRA adapter for a tiny checkpoint, made offline with peft: random (not zero) low-rank
weights on the language model's attention, so the adapter changes what the model says. Saved in
PEFT's layout (``adapter_config.json``, ``adapter_model.safetensors``), which the transformers
engine loads with ``load_adapter`` and vLLM with a ``LoRARequest``."""

from __future__ import annotations

from pathlib import Path

TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
"""The language model's attention projections (vLLM serves LoRA on the language model only)."""


def build_lora(base: str | Path, directory: str | Path, rank: int = 8, seed: int = 0) -> Path:
    """Write an adapter of rank ``rank`` for the checkpoint at ``base`` into ``directory``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    from plugins.hf.inputs import auto_load

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = auto_load(str(base), AutoConfig.from_pretrained(str(base)), False, {})
    if model is None:
        raise ValueError(f"transformers loads no model from {base}")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                        init_lora_weights=False)  # random B: a change from the first step
    get_peft_model(model, config).save_pretrained(str(out))
    return out
