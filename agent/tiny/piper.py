"""A tiny voice file in Piper's format, built offline for tests: what plugins/piper.py and
piper-tts rely on in a real voice, without its weights.

A real Piper voice is a VITS model exported to ONNX: inputs ``input`` (phoneme ids, int64
``[1, N]``), ``input_lengths`` (int64 ``[1]``) and ``scales`` (float ``[3]``: noise,
length, noise width); output float audio ``[1, 1, T]`` in -1..1, about ``hop_length``
samples a phoneme id times the length scale. Its ``.onnx.json`` gives the sample rate, the
espeak-ng voice and the phoneme id map. This one keeps all of that: each phoneme id picks
``hop_length`` random samples, stretched by the length scale, so its speech is noise of
the right length (a real voice's words cannot be checked without its weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RATE = 22050
HOP = 256


def build_piper(directory: str | Path, name: str = "tiny-piper") -> Path:
    """Write ``NAME.onnx`` and ``NAME.onnx.json`` into ``directory``; the ``.onnx`` path.
    Needs the ``onnx`` package, and piper-tts for its phoneme map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    symbols = 1 + max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids)
    table = np.random.default_rng(0).uniform(-0.5, 0.5, (symbols, HOP)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input"], ["frames"]),
        helper.make_node("Reshape", ["frames", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["scales", "one", "two"], ["length_scale"]),
        helper.make_node("Concat", ["ones", "length_scale"], ["resize_scales"], axis=0),
        helper.make_node("Resize", ["flat", "", "resize_scales"], ["stretched"],
                         mode="nearest"),
        helper.make_node("Tanh", ["stretched"], ["output"]),
    ]
    constants = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([1.0, 1.0], np.float32), "ones"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_piper",
        [helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])],
        constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.16 and later read
    onnx.checker.check_model(model)
    path = out / f"{name}.onnx"
    onnx.save(model, path)
    Path(f"{path}.json").write_text(json.dumps({
        "audio": {"sample_rate": RATE}, "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak", "num_symbols": symbols, "num_speakers": 1,
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP, "hop_length": HOP,
        "piper_version": "1.4.2"}))
    return path
