"""The vLLM engine (engine.py) and its options (options.py)."""

from plugins.vllm_engine.engine import VllmEngine, refusal, register_engines
from plugins.vllm_engine.options import ENGINE_OPTIONS, VllmOptions, structured

__all__ = ["ENGINE_OPTIONS", "VllmEngine", "VllmOptions", "refusal", "register_engines",
           "structured"]
