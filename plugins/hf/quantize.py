"""Quantized weights on the transformers engine.

``options.quantization``: ``nf4`` or ``fp4`` (4-bit, as the MiniCPM-V and Qwen2-VL guides load
them) or ``int8``, quantized by bitsandbytes while the checkpoint loads (CUDA, and CPUs with
bitsandbytes 0.46 or later). A checkpoint that comes quantized (its ``config.json`` has a
``quantization_config``: bitsandbytes, AWQ, GPTQ, FP8, ...) loads as its config says, with no
option, when the library that method needs is installed.
"""

from __future__ import annotations

from typing import Any

from agent import ConfigError

METHODS = ("nf4", "fp4", "int8")


def quantized_with(checkpoint: Any) -> str | None:
    """The method a checkpoint was saved quantized with (``None``: full weights)."""
    config = getattr(checkpoint, "quantization_config", None)
    if config is None:
        return None
    method = config.get("quant_method") if isinstance(config, dict) else getattr(
        config, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def load_kwargs(name: str, method: str | None, checkpoint: Any, device: str,
                dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``method`` (``None``: none asked), and the
    device placement a quantized model needs (it cannot be moved after loading)."""
    saved = quantized_with(checkpoint)
    if method is None:
        return {"device_map": device} if saved else {}
    if method not in METHODS:
        raise ConfigError(f"model {name!r}: options.quantization {method!r} is not one of "
                          f"{', '.join(METHODS)}")
    if saved:
        raise ConfigError(f"model {name!r}: the checkpoint is already quantized ({saved}); "
                          "remove options.quantization")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: options.quantization {method} needs bitsandbytes: "
                          "pip install 'streamagent[quantization]'") from exc
    if method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        import torch

        compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method,
                                    bnb_4bit_compute_dtype=compute,
                                    bnb_4bit_use_double_quant=True)
    return {"quantization_config": config, "device_map": device}
