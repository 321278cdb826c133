"""Multimodal LLMs on Hugging Face transformers: any checkpoint its Auto classes load (the
generic path), plus the built-in families (plugins/hf/families.py). Needs
``pip install 'streamagent[transformers]'``; nothing heavy is imported until a model loads."""

from __future__ import annotations

from typing import Any

from agent import hookimpl
from plugins.hf.engine import TransformersEngine
from plugins.hf.families import FAMILIES
from plugins.hf.handlers import DescribeHandler, ListenHandler, VideoHandler


@hookimpl
def register_engines(register: Any) -> None:
    register(TransformersEngine)


@hookimpl
def register_handlers(register: Any) -> None:
    register(DescribeHandler)
    register(VideoHandler)
    register(ListenHandler)


@hookimpl
def register_families(register: Any) -> None:
    for family in FAMILIES:
        register(family)
