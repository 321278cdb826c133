"""Multimodal LLMs on Hugging Face transformers: Qwen2-VL, Qwen2.5-VL, Qwen2-Audio,
Qwen2.5-Omni (thinker), MiniCPM-V / MiniCPM-o. Needs ``pip install 'streamagent[transformers]'``;
nothing heavy is imported until a model loads."""

from __future__ import annotations

from typing import Any

from agent import hookimpl
from plugins.hf.engine import TransformersEngine
from plugins.hf.handlers import DescribeHandler, ListenHandler, VideoHandler


@hookimpl
def register_engines(register: Any) -> None:
    register(TransformersEngine)


@hookimpl
def register_handlers(register: Any) -> None:
    register(DescribeHandler)
    register(VideoHandler)
    register(ListenHandler)
