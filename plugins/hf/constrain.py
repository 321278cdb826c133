"""Constrained decoding on the transformers engine: an xgrammar grammar as a logits processor."""

from __future__ import annotations

from typing import Any

from agent import EngineError


def schema_processor(compiled: Any) -> Any:
    """A logits processor that lets through only the tokens ``compiled`` (an xgrammar grammar)
    allows next: the output follows the schema, and an end-of-sequence token is allowed only
    once the JSON value is complete. One per ``generate()`` call, one sequence."""
    import xgrammar as xgr
    from transformers import LogitsProcessor

    class Schema(LogitsProcessor):
        def __init__(self) -> None:
            self.matcher = xgr.GrammarMatcher(compiled)
            self.bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
            self.started = False

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.started:  # the token chosen at the last step
                token = int(input_ids[0, -1])
                if not self.matcher.accept_token(token):
                    raise EngineError(f"token {token} breaks the output schema")
            self.started = True
            self.matcher.fill_next_token_bitmask(self.bitmask)
            on = scores.device.type  # xgrammar's own kernels on CPU and CUDA
            xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device),
                                            backend="auto" if on in ("cpu", "cuda")
                                            else "torch_native")
            return scores

    return Schema()
