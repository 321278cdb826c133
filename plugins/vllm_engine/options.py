"""The vLLM engine's ``options:``: vLLM's engine arguments it passes on, and how it enforces
``output_schema``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from agent import ConfigError, Options

ENGINE_OPTIONS = ("max_model_len", "gpu_memory_utilization", "max_num_seqs",
                  "limit_mm_per_prompt", "tensor_parallel_size", "enable_prefix_caching",
                  "enforce_eager", "kv_cache_memory_bytes", "max_lora_rank", "dtype", "seed",
                  "structured_outputs_config", "quantization", "block_size")
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}
"""How vLLM enforces ``output_schema``: xgrammar, as the transformers engine does, with compact
JSON (free whitespace lets a weak model write spaces up to its token limit). The option
``structured_outputs_config`` overrides these."""


class VllmOptions(Options):
    """``options:`` of a model on the vLLM engine: vLLM's engine arguments (``ENGINE_OPTIONS``,
    passed on as they are), the LoRA adapters and the frame budget."""

    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    limit_mm_per_prompt: dict[str, Any] | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    enable_prefix_caching: bool | None = None
    enforce_eager: bool | None = None
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1)
    max_lora_rank: int | None = Field(default=None, ge=1)
    dtype: str | None = None
    seed: int | None = None
    structured_outputs_config: dict[str, Any] | None = None
    quantization: str | None = None
    block_size: int | None = Field(default=None, ge=1)
    lora: dict[str, str] = Field(default_factory=dict)
    default_lora: str | None = None
    max_pixels: int = Field(default=640 * 480, ge=28 * 28)


def structured(name: str, options: Mapping[str, Any] | None) -> Any:
    """vLLM's structured-outputs config: ours, then what the model's options change."""
    from vllm.config import StructuredOutputsConfig

    try:
        return StructuredOutputsConfig(**{**STRUCTURED_OUTPUTS, **dict(options or {})})
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"model {name!r}: bad structured_outputs_config: {exc}") from exc
