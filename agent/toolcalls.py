"""Tool calls in a model's output: how each model family writes them, found while streaming.

- ``detect_format``: how a model writes calls, from its chat template.
- ``CallParser``: a model's text pieces in, text and ``ToolCallDelta`` parts out.

Enforcing ``tool_choice`` and wrapping an engine's stream live in ``agent.toolstream``.
Formats follow vLLM's tool parsers (``vllm/tool_parsers``), on decoded text, not tokens.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from agent.ids import new_id
from agent.parts import Part, TextDelta, ToolCallDelta

FORMATS = ("hermes", "llama3_json", "mistral")
ENFORCED = "json_array"
"""``CallParser``'s format for an enforced ``required`` choice: a bare JSON array of
``{"name": …, "arguments": …}`` objects (what ``forced_schema`` asks for)."""

_MARKERS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]"}
_HERMES_END = "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_ARGS = "[ARGS]"


def detect_format(chat_template: str | None) -> str | None:
    """How a model writes tool calls, from its chat template: ``hermes`` (Qwen, Hermes:
    ``<tool_call>{json}</tool_call>``), ``mistral`` (``[TOOL_CALLS]``), ``llama3_json`` (Llama
    3.1+: a bare JSON object, maybe after ``<|python_tag|>``); ``None``: its template renders
    no tools."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3_json"
    return "hermes"


def _overlap(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (a marker on its way)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _clip(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class _Brackets:
    """Finds where the JSON value that opens at ``start`` closes, as its text grows."""

    def __init__(self, start: int = 0) -> None:
        self.pos, self.depth, self.in_string, self.escaped = start, 0, False, False

    def end(self, text: str) -> int | None:
        """The index just past the closing bracket, or ``None`` while it has not come."""
        for i in range(self.pos, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = i + 1
                    return i + 1
        self.pos = len(text)
        return None


def _as_call(obj: object, names: Collection[str]) -> tuple[str, str] | str:
    """A decoded call as (name, compact JSON arguments), or what is wrong with it."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return 'not a call (expected an object with a string "name")'
    name: str = obj["name"]
    if name not in names:
        return f"call to unknown tool {name!r} (tools: {', '.join(sorted(names)) or 'none'})"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return f"arguments of {name!r} are a string that is not JSON"
    if not isinstance(args, dict):
        return f"arguments of {name!r} are not a JSON object"
    return name, json.dumps(args, separators=(",", ":"), ensure_ascii=False)


def _whole_items(text: str) -> list[Any]:
    """The JSON values written whole at the start of an unfinished array's body."""
    decoder, items, i = json.JSONDecoder(), list[Any](), 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            item, i = decoder.raw_decode(text, i)
        except ValueError:
            return items
        items.append(item)


def _loads(text: str) -> tuple[Any, str | None]:
    """Decoded JSON, or ``None`` and why not."""
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON ({exc})"


class CallParser:
    """Splits one model output, fed in pieces, into text and tool calls written in ``fmt``.

    Text that may still turn out to be a call (a partial marker, a leading ``{`` for
    ``llama3_json``) is withheld until decided; whitespace between text and a call is dropped.
    A malformed call never raises: its text goes out as text and ``problems`` says why.
    """

    def __init__(self, fmt: str, names: Collection[str], parallel: bool = True) -> None:
        if fmt not in (*FORMATS, ENFORCED):
            raise ValueError(f"unknown tool call format {fmt!r}; known: {FORMATS}")
        self.fmt, self.names, self.parallel = fmt, frozenset(names), parallel
        self.problems: list[str] = []
        self.calls = 0
        self._buf = ""
        self._state = {"llama3_json": "start", ENFORCED: "head"}.get(fmt, "text")
        self._at = 0  # where, in the buffer, the current call's next piece starts
        self._lead = ""  # whitespace before a call's marker: text again if the call is bad
        self._after_call = False  # drop the whitespace that follows a call
        self._brackets = _Brackets()
        self._name = ""
        self._out: list[Part] = []

    def feed(self, text: str) -> list[Part]:
        """The parts that ``text`` (the output's next piece) decides."""
        self._buf += text
        while getattr(self, f"_on_{self._state}")(False):
            pass
        return self._take()

    def finish(self) -> list[Part]:
        """The parts still withheld, at the end of the output."""
        while getattr(self, f"_on_{self._state}")(True):
            pass
        return self._take()

    def _take(self) -> list[Part]:
        out, self._out = self._out, []
        return out

    def _text(self, piece: str, final: bool) -> str:
        """Send ``piece`` as text, less whitespace next to a call; returns the trailing
        whitespace withheld (a call may follow it)."""
        if self._after_call:
            piece = piece.lstrip()
        body = piece if final else piece.rstrip()
        if body:
            self._out.append(TextDelta(body))
            self._after_call = False
        return piece[len(body):]

    def _call(self, obj: object, raw: str) -> None:
        found = _as_call(obj, self.names)
        if isinstance(found, str):
            self._bad(found, raw)
        elif self.calls and not self.parallel:
            self.problems.append(f"dropped another call ({found[0]!r}): parallel_tool_calls "
                                 "is off")
            self._after_call = True
        else:
            name, arguments = found
            self._out += [ToolCallDelta(self.calls, new_id("call"), name),
                          ToolCallDelta(self.calls, arguments=arguments)]
            self.calls += 1
            self._after_call = True

    def _bad(self, problem: str, raw: str) -> None:
        self.problems.append(f"{self.fmt} tool call: {problem}; kept as text: {_clip(raw)}")
        if raw:
            self._out.append(TextDelta(raw))
        self._after_call = False

    def _end_call(self, end: int, state: str) -> None:
        self._buf, self._at, self._lead, self._state = self._buf[end:], 0, "", state

    # The states: each consumes what it can decide, and says whether to look again.

    def _on_text(self, final: bool) -> bool:
        """Text, until a call's marker (``hermes``, ``mistral``)."""
        marker = _MARKERS[self.fmt]
        i = self._buf.find(marker)
        if i < 0:
            cut = len(self._buf) if final else len(self._buf) - _overlap(self._buf, marker)
            self._buf = self._text(self._buf[:cut], final) + self._buf[cut:]
            return False
        self._lead = self._text(self._buf[:i], False)
        self._buf, self._at = self._buf[i:], len(marker)
        self._state = "tag" if self.fmt == "hermes" else "head"
        return True

    def _on_tag(self, final: bool) -> bool:
        """A ``hermes`` call's JSON, until ``</tool_call>`` (or the end of the output)."""
        j = self._buf.find(_HERMES_END, self._at)
        if j < 0 and not final:
            return False
        if j < 0:
            body, end = self._buf[self._at:], len(self._buf)
            body = body[:len(body) - _overlap(body, _HERMES_END)]
        else:
            body, end = self._buf[self._at:j], j + len(_HERMES_END)
        obj, problem = _loads(body)
        raw = self._lead + self._buf[:end]
        if problem:
            self._bad(problem, raw)
        else:
            self._call(obj, raw)
        self._end_call(end, "text")
        return True

    def _on_head(self, final: bool) -> bool:
        """After ``[TOOL_CALLS]`` (or at the start of an enforced array): an array, or a name."""
        rest = self._buf[self._at:]
        start = len(self._buf) - len(rest.lstrip())
        if start == len(self._buf):
            if final:
                self._bad("no call", self._lead + self._buf)
                self._end_call(len(self._buf), "plain")
            return final
        if self._buf[start] == "[":
            self._at, self._brackets, self._state = start, _Brackets(start), "array"
        elif self.fmt == "mistral":
            self._at, self._state = start, "name"
        else:
            self.problems.append("enforced tool calls: not a JSON array (it begins "
                                 f"{self._buf[start]!r}); kept as text")
            self._state = "plain"
        return True

    def _on_array(self, final: bool) -> bool:
        """A JSON array of ``{"name", "arguments"}`` objects, to its closing bracket."""
        end = self._brackets.end(self._buf)
        if end is None:
            if final:  # cut by the token limit: the calls written whole still count
                whole = _whole_items(self._buf[self._at + 1:])
                if whole and self.fmt == ENFORCED:
                    self.problems.append(f"unfinished JSON array: {len(whole)} whole call(s) "
                                         f"kept, the rest dropped: {_clip(self._buf)}")
                    for call in whole:
                        self._call(call, json.dumps(call, ensure_ascii=False))
                else:
                    self._bad("unfinished JSON array", self._lead + self._buf)
                self._end_call(len(self._buf), "plain")
            return final
        calls, problem = _loads(self._buf[self._at:end])
        raw = self._lead + self._buf[:end]
        if problem or not calls:
            self._bad(problem or "an empty array", raw)
        for call in calls if isinstance(calls, list) else ():
            self._call(call, json.dumps(call, ensure_ascii=False))
        self._end_call(end, "text" if self.fmt == "mistral" else "plain")
        return True

    def _on_name(self, final: bool) -> bool:
        """A ``mistral`` call's name, until ``[ARGS]`` (or the ``{`` that opens them)."""
        rest = self._buf[self._at:]
        ends = [k for k in (rest.find(_ARGS), rest.find("{")) if k >= 0]
        if not ends:
            if final:
                self._bad("no arguments after the name", self._lead + self._buf)
                self._end_call(len(self._buf), "plain")
            return final
        k = min(ends)
        self._name = rest[:k].strip()
        self._at += k + (len(_ARGS) if rest.startswith(_ARGS, k) else 0)
        self._state = "args"
        return True

    def _on_args(self, final: bool) -> bool:
        """Where a ``mistral`` call's arguments begin: they must be a JSON object."""
        rest = self._buf[self._at:]
        start = len(self._buf) - len(rest.lstrip())
        if start == len(self._buf):
            if final:
                self._bad("no arguments after the name", self._lead + self._buf)
                self._end_call(len(self._buf), "plain")
            return final
        if self._buf[start] != "{":
            self._bad(f"arguments of {self._name!r} are not a JSON object",
                      self._lead + self._buf[:start])
            self._end_call(start, "text")
            return True
        self._at, self._brackets, self._state = start, _Brackets(start), "object"
        return True

    def _on_object(self, final: bool) -> bool:
        """A JSON object to its closing brace: a ``llama3_json`` call, ``mistral`` arguments."""
        end = self._brackets.end(self._buf)
        if end is None:
            if final:
                self._bad("unfinished JSON", self._lead + self._buf)
                self._end_call(len(self._buf), "plain")
            return final
        obj, problem = _loads(self._buf[self._at:end])
        raw = self._lead + self._buf[:end]
        if problem:
            self._bad(problem, raw)
        else:
            self._call({"name": self._name, "arguments": obj} if self.fmt == "mistral" else obj,
                       raw)
        self._end_call(end, "text" if self.fmt == "mistral" else "objects")
        return True

    def _on_start(self, final: bool) -> bool:
        """The start of a ``llama3_json`` output: calls if it opens with ``{`` or the tag."""
        s = self._buf.lstrip()
        if s.startswith((_PYTHON_TAG, "{")):
            tag = len(_PYTHON_TAG) if s.startswith(_PYTHON_TAG) else 0
            self._at, self._state = len(self._buf) - len(s) + tag, "objects"
            return True
        if not final and _PYTHON_TAG.startswith(s):
            return False
        self._state = "plain"
        return True

    def _on_objects(self, final: bool) -> bool:
        """Between ``llama3_json`` calls: ``;`` and whitespace, then another ``{`` or text."""
        rest = self._buf[self._at:]
        s = rest.lstrip("; \t\r\n")
        start = len(self._buf) - len(s)
        if not s:
            if final and self._buf.strip("; \t\r\n"):
                self._bad(f"no call after {_PYTHON_TAG}", self._buf)
            if final:
                self._buf = ""
            return False
        if s[0] == "{":
            self._at, self._brackets, self._state = start, _Brackets(start), "object"
            return True
        if self._buf[:start].strip("; \t\r\n"):
            self.problems.append(f"llama3_json: no JSON call after {_PYTHON_TAG} (it is "
                                 f"followed by {s[0]!r}); kept as text")
        else:
            self._buf = s
        self._state = "plain"
        return True

    def _on_plain(self, final: bool) -> bool:
        """Text to the end: no call can follow."""
        self._text(self._buf, True)
        self._buf = ""
        return False
