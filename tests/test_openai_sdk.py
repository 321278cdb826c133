"""The official openai SDK's realtime client, unchanged, against the embedded default."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from agent.testing import jpeg_bytes
from agent.uvicorn_server import Address
from tests.helpers import sdk_answer

pytestmark = pytest.mark.slow


def astronaut_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(skdata.astronaut())).save(buf, format="JPEG")
    return buf.getvalue()


async def ask(address: Address, image: bytes, question: str) -> tuple[list[str], object]:
    return await sdk_answer(address, "default", image, question, session={
        "type": "realtime", "output_modalities": ["text"], "instructions": "Say what you see."})


async def test_sdk_reads_the_text_in_an_image(embedded: Address) -> None:
    deltas, response = await ask(embedded, jpeg_bytes("OPEN SESAME", size=(640, 240)),
                                 "What does it say?")
    assert len(deltas) >= 1
    assert "OPEN SESAME" in "".join(deltas)
    assert response.status == "completed"  # type: ignore[attr-defined]


async def test_sdk_sees_a_face(embedded: Address) -> None:
    deltas, _ = await ask(embedded, astronaut_jpeg(), "Who is there?")
    assert "1 face in view." in "".join(deltas)
