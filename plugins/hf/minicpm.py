"""MiniCPM-V 2.6 / MiniCPM-o 2.6: loading their remote code on transformers 5.x, and driving
their ``chat()`` API.

What their code needs, read from ``modeling_minicpmv.py`` / ``modeling_minicpmo.py``:
- MiniCPM-o imports ``transformers.LogitsWarper`` and ``WHISPER_ATTENTION_CLASSES`` from
  ``transformers.models.whisper.modeling_whisper``; both are gone from transformers 5.x.
  :func:`install_transformers_4_names` puts them back before the remote code is imported:
  ``LogitsWarper`` as ``LogitsProcessor`` (the code only names it in annotations), and a
  mapping from every attention implementation to a ``WhisperAttention`` that takes the 4.x
  call (``layer_head_mask=``, ``past_key_value=``) and returns the 4.x triple.
- The top-level classes never call ``post_init()``, which ``from_pretrained`` in 5.x relies on
  (``all_tied_weights_keys``): :func:`load` loads a subclass whose ``__init__`` calls it.
- MiniCPM-o's ``init_tts`` asserts that ``vocos`` and ``vector_quantize_pytorch`` are
  installed; we output text only, so it loads with ``init_tts=False``.
- ``chat(stream=True)`` asserts ``sampling=True``; greedy decoding is ``do_sample=False``
  among the options it keeps. It keeps no others, so the stopping criterion that cancels a
  request goes to the language model's ``generate`` directly.
- Its stream runs ``generate`` in a thread of its own behind a streamer without a timeout.
  :class:`MiniCPMChat` records that thread's exception, ends the streamer and raises the
  exception here, and gives the streamer a timeout.
- MiniCPM-V takes the system prompt as ``system_prompt=`` and asserts that the first message
  is the user's; MiniCPM-o has no ``system_prompt`` and takes a ``system`` message first.

The families (plugins/hf/families.py) register :func:`load` and :func:`chat` through the
``register_families`` hook.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent import ChatCall, EngineError, ModelRequest, fit, subsample

log = logging.getLogger(__name__)
TOKEN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ChatStyle:
    system_message: bool  # MiniCPM-o: a system message; MiniCPM-V: the system_prompt argument
    init_tts: bool  # whether from_pretrained takes init_tts (MiniCPM-o)


STYLES = {"minicpm-v": ChatStyle(system_message=False, init_tts=False),
          "minicpm-o": ChatStyle(system_message=True, init_tts=True)}


def install_transformers_4_names() -> None:
    """Give transformers 5.x the two names MiniCPM-o's code imports (idempotent)."""
    import importlib

    from transformers.models.whisper import modeling_whisper

    # after the submodule import: transformers can re-create its lazy top-level module then
    transformers: Any = importlib.import_module("transformers")
    whisper: Any = modeling_whisper
    if not hasattr(transformers, "LogitsWarper"):
        transformers.LogitsWarper = transformers.LogitsProcessor
    if not hasattr(whisper, "WHISPER_ATTENTION_CLASSES"):
        whisper.WHISPER_ATTENTION_CLASSES = _AnyImplementation(_legacy_whisper_attention())


class _AnyImplementation(dict[Any, Any]):
    """``{"eager": cls, "sdpa": cls, ...}`` for any key: 5.x's WhisperAttention dispatches on
    its config's attention implementation by itself."""

    def __init__(self, cls: type) -> None:
        super().__init__(eager=cls, sdpa=cls, flash_attention_2=cls)
        self.cls = cls

    def __missing__(self, key: Any) -> type:
        return self.cls


def _legacy_whisper_attention() -> type:
    from transformers.models.whisper import modeling_whisper

    base: Any = modeling_whisper.WhisperAttention

    class LegacyWhisperAttention(base):  # type: ignore[misc]
        """WhisperAttention called the transformers 4.x way, as MiniCPM-o's encoder does."""

        def forward(self, hidden_states: Any, attention_mask: Any = None,
                    layer_head_mask: Any = None, output_attentions: bool = False,
                    past_key_value: Any = None, **kwargs: Any) -> tuple[Any, Any, Any]:
            if layer_head_mask is not None:
                raise NotImplementedError("head masks are gone from transformers 5.x")
            out, weights = super().forward(hidden_states, past_key_values=past_key_value,
                                           attention_mask=attention_mask,
                                           output_attentions=output_attentions, **kwargs)
            return out, weights, past_key_value

    return LegacyWhisperAttention


def load(source: str, family: str, **kwargs: Any) -> Any:
    """``AutoModel.from_pretrained(source, trust_remote_code=True)``, made to work on 5.x."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    install_transformers_4_names()
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    cls = with_post_init(get_class_from_dynamic_module(config.auto_map["AutoModel"], source))
    if STYLES[family].init_tts:
        kwargs["init_tts"] = False  # text out: no vocos / vector_quantize_pytorch needed
    return cls.from_pretrained(source, **kwargs)


def chat(call: ChatCall, family: str) -> Iterator[str]:
    """The family's ``chat``: one :class:`MiniCPMChat` per loaded model, driving its ``chat()``."""
    with _CHATS_LOCK:
        driver = _CHATS.get(call.model)
        if driver is None:
            driver = MiniCPMChat(call.model, call.tokenizer, family, call.modalities,
                                 call.max_pixels, call.token_timeout_s)
            _CHATS[call.model] = driver
    return driver.stream(call.request, call.options, call.cancelled, call.counted)


_CHATS: weakref.WeakKeyDictionary[Any, MiniCPMChat] = weakref.WeakKeyDictionary()
_CHATS_LOCK = threading.Lock()


def with_post_init(cls: Any) -> Any:
    """``cls`` whose ``__init__`` ends with ``post_init()`` when the class's own does not."""

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, config, *args, **kwargs)
        if "all_tied_weights_keys" not in vars(self):
            self.post_init()

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def chat_messages(request: ModelRequest, media: list[Any], style: ChatStyle,
                  image: Callable[[Any], Any]) -> tuple[list[dict[str, Any]], str]:
    """``msgs`` for ``chat()``, and the system prompt when it goes as an argument."""
    msgs: list[dict[str, Any]] = []
    if request.instructions and style.system_message:
        msgs.append({"role": "system", "content": [request.instructions]})
    for img, answer in request.examples:
        msgs += [{"role": "user", "content": [image(img)]},
                 {"role": "assistant", "content": [answer]}]
    history = [t for t in request.history if t.role in ("user", "assistant")]
    if not request.examples:  # the first turn after the system prompt must be the user's
        while history and history[0].role != "user":
            history.pop(0)
    msgs += [{"role": t.role, "content": [t.text]} for t in history]
    msgs.append({"role": "user",
                 "content": [*media, request.prompt or "Describe what you see and hear."]})
    system = "" if style.system_message else request.instructions
    return msgs, system


class MiniCPMChat:
    """One loaded MiniCPM model's ``chat()``, one request at a time (its code keeps state on
    the model, and the guard below patches its language model per call)."""

    def __init__(self, model: Any, tokenizer: Any, family: str, modalities: frozenset[str],
                 max_pixels: int, token_timeout_s: float = TOKEN_TIMEOUT_S) -> None:
        self.model, self.tokenizer, self.style = model, tokenizer, STYLES[family]
        self.modalities, self.max_pixels = modalities, max_pixels
        self.token_timeout_s = token_timeout_s
        self.lock = threading.Lock()

    def stream(self, request: ModelRequest, options: dict[str, Any], cancelled: threading.Event,
               counted: Callable[[int], None]) -> Iterator[str]:
        if not self.lock.acquire(timeout=self.token_timeout_s):
            raise EngineError("the model is still busy with another request")
        try:
            yield from self._stream(request, dict(options), cancelled, counted)
        finally:
            self.lock.release()

    def _stream(self, request: ModelRequest, options: dict[str, Any],
                cancelled: threading.Event, counted: Callable[[int], None]) -> Iterator[str]:
        msgs, system, extra = self._inputs(request)
        if system:
            extra["system_prompt"] = system
        stop = options.pop("stopping_criteria")
        beams = int(options.get("num_beams", 1)) > 1  # beam search: no stream, one delta
        guard = _Guard(self.model.llm, stop, self.token_timeout_s, counted)
        with guard:
            try:
                out = guard.call(lambda: self.model.chat(
                    image=None, msgs=msgs, tokenizer=self.tokenizer, sampling=not beams,
                    stream=not beams, **extra, **options))
                if beams:
                    yield str(out)
                    return
                yield from _texts(out, guard)
            finally:
                cancelled.set()  # stops generate() if we leave early; harmless after the end
        if guard.failure is not None:
            raise EngineError(f"generation failed: {guard.failure!r}") from guard.failure

    def _inputs(self, request: ModelRequest) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        from PIL import Image

        def image(img: Any) -> Any:
            return Image.fromarray(fit(img, self.max_pixels))

        media: list[Any] = [image(img) for img in request.images]
        extra: dict[str, Any] = {}
        if request.video:
            frames = subsample(request.video)
            media += [image(f) for f in frames]
            extra = {"use_image_id": False, "max_slice_nums": 1 if len(frames) > 16 else 2}
        if request.audio is not None and "audio" in self.modalities:
            media.append(request.audio)  # its processor splits audio over 30 s into parts
        msgs, system = chat_messages(request, media, self.style, image)
        return msgs, system, extra


def _texts(out: Iterator[str], guard: _Guard) -> Iterator[str]:
    try:
        for text in out:
            if guard.failure is not None:
                return
            if text:
                yield text
    except Exception as exc:  # the streamer's queue.Empty after token_timeout_s
        raise EngineError(f"no token from the model in {guard.timeout_s:g} s "
                          f"({type(exc).__name__})") from exc


class _Guard:
    """For one ``chat()`` call: wraps the language model's ``generate`` to add the stopping
    criterion, give the streamer ``chat()`` made a timeout, count tokens, and catch the
    generate thread's exception (then end the streamer so its reader stops waiting)."""

    def __init__(self, llm: Any, stop: Any, timeout_s: float,
                 counted: Callable[[int], None]) -> None:
        self.llm, self.stop, self.timeout_s, self.counted = llm, stop, timeout_s, counted
        self.failure: BaseException | None = None
        self.done = threading.Event()  # clear while a generate() chat() asked for may run
        self.done.set()

    def call(self, chat: Callable[[], Any]) -> Any:
        """Run ``chat``; a streaming chat() returns with its generate thread started."""
        self.done.clear()
        try:
            return chat()
        except BaseException:
            self.done.set()
            raise

    def __enter__(self) -> _Guard:
        original = self.llm.generate
        caller = threading.current_thread()

        def generate(*args: Any, **kwargs: Any) -> Any:
            streamer = kwargs.get("streamer")
            if streamer is not None:
                self._watch(streamer)
            try:
                out = original(*args, stopping_criteria=self.stop, **kwargs)
                if streamer is None and getattr(out, "ndim", 0) == 2:  # from embeddings: new
                    self.counted(int(out.shape[1]))  # tokens only (beam search: the best one)
                return out
            except BaseException as exc:
                if threading.current_thread() is caller:
                    raise
                self.failure = exc
                if streamer is not None:
                    streamer.end()
                return None
            finally:
                self.done.set()

        self.llm.generate = generate
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.llm.generate  # back to the class's method
        if not self.done.wait(self.timeout_s):  # a stopped stream: let generate() notice
            log.warning("the model's generate thread is still running after %g s",
                        self.timeout_s)

    def _watch(self, streamer: Any) -> None:
        streamer.timeout = self.timeout_s
        put, first = streamer.put, [True]

        def counting_put(value: Any) -> None:
            if first[0]:  # the prompt (empty: chat() generates from embeddings)
                first[0] = False
            else:
                self.counted(int(value.numel()))
            put(value)

        streamer.put = counting_put
