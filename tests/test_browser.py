"""The camera page in a real headless Chromium with a fake camera and microphone fed from files
made here (a picture with words and a face, a spoken sentence)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from skimage import data as skdata

from agent.testing import FONT, ServerThread, fake_runtime
from agent.uvicorn_server import Address
from tests.conftest import need
from tests.media import flite_wav, read_wav

pytestmark = pytest.mark.slow
os.environ.setdefault("SE_OFFLINE", "true")  # selenium: never fetch drivers or browsers
os.environ.setdefault("SE_AVOID_STATS", "true")
SENTENCE = "hello world. this is a test of speech recognition"


def camera_y4m(path: Path) -> Path:
    img = Image.new("RGB", (640, 480), "white")
    face = Image.fromarray(np.asarray(skdata.astronaut())).resize((300, 300))
    img.paste(face, (170, 170))
    ImageDraw.Draw(img).text((80, 50), "HELLO CAMERA", fill="black",
                             font=ImageFont.truetype(FONT, 56))
    png = path.with_suffix(".png")
    img.save(png)
    subprocess.run([need("ffmpeg"), "-loglevel", "error", "-y", "-loop", "1", "-i", str(png),
                    "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def microphone_wav(path: Path) -> Path:
    """The sentence, then two seconds of silence so that each loop is one utterance."""
    speech, rate = read_wav(flite_wav(path.with_name("sentence.wav"), SENTENCE))
    padded = np.concatenate([np.zeros(rate // 2), speech, np.zeros(rate * 2)])
    pcm = (padded * 32767).astype("<i2")
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def chromium(tmp: Path, fake_device: bool = True, fake_ui: bool = True,
             video: Path | None = None, audio: Path | None = None) -> WebDriver:
    opts = Options()
    opts.binary_location = need("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--disable-quic",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp}",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    if fake_device:
        opts.add_argument("--use-fake-device-for-media-stream")
    if fake_ui:
        opts.add_argument("--use-fake-ui-for-media-stream")
    if video is not None:
        opts.add_argument(f"--use-file-for-fake-video-capture={video}")
    if audio is not None:
        opts.add_argument(f"--use-file-for-fake-audio-capture={audio}")
    return webdriver.Chrome(service=Service(need("chromedriver")), options=opts)


@pytest.fixture
def browser_dir(tmp_path: Path) -> Iterator[Path]:
    profile = tmp_path / "profile"
    profile.mkdir()
    yield profile
    shutil.rmtree(profile, ignore_errors=True)


def texts_by(driver: WebDriver, handler: str) -> list[str]:
    items = driver.find_elements(By.CSS_SELECTOR, f'#responses li[data-handler="{handler}"] .text')
    return [i.text for i in items]


def status(driver: WebDriver) -> tuple[str, str]:
    el = driver.find_element(By.ID, "status")
    return el.get_attribute("data-state") or "", el.text


def test_page_reads_sees_and_hears(embedded: Address, tmp_path: Path, browser_dir: Path) -> None:
    driver = chromium(browser_dir, video=camera_y4m(tmp_path / "cam.y4m"),
                      audio=microphone_wav(tmp_path / "mic.wav"))
    try:
        driver.get(embedded.http + "/")
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 40, poll_frequency=0.5)
        wait.until(lambda d: status(d)[0] == "live")
        wait.until(lambda d: any("HELLO CAMERA" in t for t in texts_by(d, "text_in_view")))
        wait.until(lambda d: "1 face in view." in texts_by(d, "faces"))
        wait.until(lambda d: any(len(set(t.lower().split()) & {"hello", "world", "test",
                                                               "speech", "recognition"}) >= 3
                                 for t in texts_by(d, "speech")))
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#responses .label")]
        assert all(" · " in label for label in labels)  # handler · window times · clock
        driver.find_element(By.ID, "question").send_keys("What is in view?")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: any("Text in view: HELLO CAMERA" in t
                                 for t in texts_by(d, "faces+speech+text_in_view")))
        shot = os.environ.get("STREAMAGENT_SCREENSHOT", str(tmp_path / "page.png"))
        driver.save_screenshot(shot)
        assert driver.find_elements(By.CSS_SELECTOR, "#errors li") == []
    finally:
        driver.quit()


NOTIFICATION_SPY = """
window.notified = [];
const Real = window.Notification;
window.Notification = class extends Real {
  constructor(title, options) { window.notified.push(options.body); super(title, options); }
};"""


def watch_for(driver: WebDriver, kind: str, text: str = "") -> None:
    Select(driver.find_element(By.ID, "watch-kind")).select_by_value(kind)
    if text:
        driver.find_element(By.ID, "watch-text").send_keys(text)
    driver.find_element(By.ID, "watch-add").click()


def watch_ids(driver: WebDriver) -> list[str]:
    return list(driver.execute_script(  # in one go: the list is redrawn on each update
        'return [...document.querySelectorAll("#watches li")].map((li) => li.dataset.watch)'))


FIRINGS = """return [...document.querySelectorAll('#responses li.firing[data-status="completed"]')]
  .map((li) => [li.dataset.watch, li.querySelector(".text").textContent, li.dataset.alert])"""


def firings(driver: WebDriver) -> dict[str, tuple[str, str, int]]:
    """Each watch's firings on the page: (its text, the alerts it made, how many)."""
    found: dict[str, tuple[str, str, int]] = {}
    for watch, text, alert in driver.execute_script(FIRINGS):
        found[watch] = (text, alert or "", found[watch][2] + 1 if watch in found else 1)
    return found


def test_watch_for_box_registers_watches_and_firings_stand_out(
        embedded: Address, tmp_path: Path, browser_dir: Path) -> None:
    driver = chromium(browser_dir, video=camera_y4m(tmp_path / "cam.y4m"))
    try:
        driver.get(embedded.http + "/")
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": embedded.http, "permissions": ["notifications"]})
        driver.execute_script(NOTIFICATION_SPY)
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 40, poll_frequency=0.5)
        wait.until(lambda d: status(d)[0] == "live")
        driver.find_element(By.ID, "watch-alert").click()
        watch_for(driver, "text_contains", "camera")
        wait.until(lambda d: watch_ids(d) == ["text:camera"])
        watch_for(driver, "face:appears")
        wait.until(lambda d: watch_ids(d) == ["text:camera", "face:appears"])
        watch_for(driver, "condition", "A door is open.")  # the embedded models have no LLM
        wait.until(lambda d: any("no LLM in this session" in e.text
                                 for e in d.find_elements(By.CSS_SELECTOR, "#errors li")))
        assert watch_ids(driver) == ["text:camera", "face:appears"]

        wait.until(lambda d: set(firings(d)) == {"text:camera", "face:appears"})
        wait.until(lambda d: texts_by(d, "faces"))  # an ordinary response beside them
        said = firings(driver)
        assert said == {"text:camera": ('watch "text:camera": text "camera" in view',
                                        "sound notification", 1),
                        "face:appears": ('watch "face:appears": a face appeared',
                                         "sound notification", 1)}
        assert sorted(driver.execute_script("return window.notified")) == sorted(
            text for text, _, _ in said.values())
        firing = driver.find_element(By.CSS_SELECTOR,
                                     '#responses li.firing[data-watch="text:camera"]')
        ordinary = driver.find_element(By.CSS_SELECTOR, '#responses li[data-handler="faces"]')
        for prop in ("border-left-color", "font-weight"):
            assert firing.value_of_css_property(prop) != ordinary.value_of_css_property(prop)
        assert firing.find_element(By.CSS_SELECTOR, ".label").text.startswith(
            "WATCH TEXT:CAMERA · ")

        driver.find_element(By.CSS_SELECTOR, '#watches li[data-watch="text:camera"] button'
                            ).click()
        wait.until(lambda d: watch_ids(d) == ["face:appears"])
    finally:
        driver.quit()


SOCKET_SPY = """
window.sent = []; window.got = [];
const Real = window.WebSocket;
window.WebSocket = class extends Real {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (e) => window.got.push(JSON.parse(e.data)));
  }
  send(data) {
    const ev = JSON.parse(data);
    if (ev.type !== "input_audio_buffer.append") window.sent.push(ev);
    super.send(data);
  }
};"""

SENT = 'return window.sent.filter((e) => e.type === arguments[0])'
GOT = 'return window.got.filter((e) => e.type === arguments[0])'


def user_turns(driver: WebDriver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR,
                                                 '#responses li[data-role="user"] .text')]


def test_speak_answers_hears_the_user_and_stops_when_interrupted(
        embedded: Address, tmp_path: Path, browser_dir: Path) -> None:
    driver = chromium(browser_dir, video=camera_y4m(tmp_path / "cam.y4m"),
                      audio=microphone_wav(tmp_path / "mic.wav"))
    try:
        driver.get(embedded.http + "/")
        driver.execute_script(SOCKET_SPY)
        driver.find_element(By.ID, "speak").click()
        driver.find_element(By.ID, "start").click()
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        wait.until(lambda d: status(d)[0] == "live")
        session = driver.execute_script(SENT, "session.update")[0]["session"]
        assert session["output_modalities"] == ["audio"]
        assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}}
        assert session["audio"]["input"]["transcription"] == {"model": "asr"}
        assert session["audio"]["input"]["turn_detection"] == {"type": "server_vad",
                                                               "create_response": True}
        # the live speech handler shows the user's words and does not say them back: the
        # audio that plays is the answer, until the next loop of the sentence interrupts it
        wait.until(lambda d: any({"hello", "world"} & set(t.lower().split())
                                 for t in user_turns(d)))
        assert all(t.startswith("You: ") for t in user_turns(driver))
        wait.until(lambda d: int(d.execute_script("return document.body.dataset.audioMs || 0")) > 0)
        wait.until(lambda d: any(t["audio_end_ms"] > 0
                                 for t in d.execute_script(SENT, "conversation.item.truncate")))
        assert driver.execute_script(GOT, "input_audio_buffer.speech_started")
        answers = {li.get_attribute("data-item-id"): li.find_element(By.CSS_SELECTOR, ".text").text
                   for li in driver.find_elements(By.CSS_SELECTOR,
                                                  '#responses li[data-answer="true"]')}
        for cut in driver.execute_script(SENT, "conversation.item.truncate"):
            assert cut["content_index"] == 0
            assert answers.get(cut["item_id"])  # an answer that said something, not a live one
        wait.until(lambda d: d.execute_script(GOT, "conversation.item.truncated"))

        driver.find_element(By.ID, "speak").click()  # off: answers in text, nothing heard
        wait.until(lambda d: d.execute_script(GOT, "session.updated")[-1]["session"][
            "output_modalities"] == ["text"])
        heard = driver.execute_script(GOT, "session.updated")[-1]["session"]["audio"]["input"]
        assert heard["transcription"] is None and heard["turn_detection"] is None
        assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#errors li")] == []
    finally:
        driver.quit()


@pytest.mark.parametrize(("flags", "state", "words"), [
    ({"fake_ui": False}, "denied", "permission denied"),
    ({"fake_device": False}, "nodevice", "No camera or microphone found"),
])
def test_media_errors_are_explained(embedded: Address, browser_dir: Path, flags: dict[str, bool],
                                    state: str, words: str) -> None:
    driver = chromium(browser_dir, **flags)
    try:
        driver.get(embedded.http + "/")
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, 20).until(lambda d: status(d)[0] == state)
        assert words in status(driver)[1]
    finally:
        driver.quit()


def test_page_reconnects_after_the_server_restarts(browser_dir: Path) -> None:
    driver = chromium(browser_dir)
    try:
        with ServerThread(fake_runtime(live=True)) as address:
            driver.get(address.http + "/")
            driver.find_element(By.ID, "start").click()
            WebDriverWait(driver, 20).until(lambda d: status(d)[0] == "live")
            WebDriverWait(driver, 20).until(lambda d: texts_by(d, "echo"))
        WebDriverWait(driver, 20).until(lambda d: status(d)[0] == "reconnecting")
        with ServerThread(fake_runtime(live=True), port=address.port):
            WebDriverWait(driver, 30).until(lambda d: status(d)[0] == "live")
    finally:
        driver.quit()
