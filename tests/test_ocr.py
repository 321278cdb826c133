"""The RapidOCR engine as tuned for live frames: one instance per worker thread, small text read."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.config import ModelConfig
from agent.engine import ModelRequest
from agent.testing import FONT
from plugins.text_in_view import RapidOCREngine
from tests.media import word_frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> RapidOCREngine:
    eng = RapidOCREngine("ocr", ModelConfig(engine="rapidocr"))
    eng.load()
    return eng


def read(engine: RapidOCREngine, image: np.ndarray) -> list[str]:
    return [t.strip() for t in engine.generate(ModelRequest(images=(image,)), threading.Event())]


def test_worker_threads_each_get_an_instance_and_read_at_once(engine: RapidOCREngine) -> None:
    words = ["APPLE", "BANANA", "CHERRY", "DOLPHIN"]
    instances: set[int] = set()

    def work(word: str) -> list[str]:
        instances.add(id(engine.reader()))
        return read(engine, word_frame(word))

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(work, words)) == [[w] for w in words]
    assert len(instances) == 2


def test_the_tuned_defaults_still_read_a_small_word_in_a_corner(engine: RapidOCREngine) -> None:
    img = Image.fromarray(word_frame("HELLO"))
    ImageDraw.Draw(img).text((540, 440), "MILK", fill="black",
                             font=ImageFont.truetype(FONT, 10))
    assert read(engine, np.asarray(img)) == ["HELLO", "MILK"]
