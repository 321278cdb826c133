"""The ``streamagent`` commands that stream media to a server: ``stream`` and ``watch``.

``agent.cli`` adds them to its ``main`` group.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from agent.logs import configure

DEFAULT_URL = "ws://127.0.0.1:8000/v1/realtime?model=default"
F = TypeVar("F", bound=Callable[..., Any])


def pacing_options(speed_help: str, sample_help: str) -> Callable[[F], F]:
    """The --speed, --send-fps and --sample-fps options, with each command's own help."""
    def wrap(command: F) -> F:
        command = click.option("--sample-fps", type=float, default=1.0, show_default=True,
                               help=sample_help)(command)
        command = click.option("--send-fps", type=float, default=10.0, show_default=True,
                               help="Video frames sent per second of media.")(command)
        return click.option("--speed", type=float, default=1.0, show_default=True,
                            help=speed_help)(command)
    return wrap


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default=DEFAULT_URL, show_default=True, help="Realtime endpoint.")
@click.option("--api-key", envvar="STREAMAGENT_API_KEY", default=None,
              help="API key [env: STREAMAGENT_API_KEY].")
@pacing_options(speed_help="Pace: 1 is real time, 2 twice as fast.",
                sample_help="Windows per second the server samples.")
@click.option("--handlers", default=None, help="Comma-separated handlers [default: the "
              "server's].")
@click.option("--idle", type=float, default=3.0, show_default=True,
              help="Seconds without news after the end before quitting.")
@click.option("--expect", type=click.IntRange(min=1), default=None,
              help="Responses expected: once that many are in after the end, quit 1 s after "
                   "the last news (--idle then only bounds a wait with none).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per response.")
def stream(path: str, url: str, api_key: str | None, speed: float, send_fps: float,
           sample_fps: float, handlers: str | None, idle: float, expect: int | None,
           as_json: bool) -> None:
    """Stream a video or audio file (mp4, webm, avi, wav, ...) and print each response with
    its window of media time and its handler."""
    from dataclasses import asdict

    from agent.streamer import stream_file

    configure("warning")

    def show(reply: object) -> None:
        line = json.dumps(asdict(reply)) if as_json else reply.line()  # type: ignore
        click.echo(line)

    names = [h.strip() for h in handlers.split(",") if h.strip()] if handlers else None
    try:
        _, stats = asyncio.run(stream_file(
            path, url, speed=speed, send_fps=send_fps, sample_fps=sample_fps, handlers=names,
            api_key=api_key or os.environ.get("OPENAI_API_KEY"), idle_s=idle, expect=expect,
            on_reply=show))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent {stats.frames} frames and {stats.audio_s:.1f} s of audio"
               + (f"; skipped {stats.bad_packets} bad packets" if stats.bad_packets else ""),
               err=True)
    sys.exit(1 if stats.errors and not as_json else 0)


@click.command()
@click.argument("source", metavar="URL_OR_FILE")
@click.option("--text-contains", multiple=True, metavar="TEXT",
              help="Fire when TEXT comes into view (the server's OCR; case and spacing "
                   "ignored).")
@click.option("--face", multiple=True, type=click.Choice(["appears", "leaves"]),
              help="Fire when a face appears, or when the face in view leaves.")
@click.option("--speech-contains", multiple=True, metavar="PHRASE",
              help="Fire when PHRASE is heard (the server's speech recognizer).")
@click.option("--condition", multiple=True, metavar="SENTENCE",
              help="Fire when an LLM answers yes to SENTENCE about the frame.")
@click.option("--model", default=None, metavar="MODEL", help="The server's model that decides each "
              "--condition [default: the session's LLM].")
@click.option("--cooldown-s", type=click.FloatRange(0, 86400), default=None,
              help="Seconds of media time each watch stays quiet after it fires "
                   "[server's default: 10].")
@click.option("--confirm-windows", type=click.IntRange(1, 30), default=None,
              help="Windows in a row a condition must hold before it fires [server's "
                   "default: 1, or 2 for --condition].")
@click.option("--webhook", default=None, metavar="URL",
              help="Also POST each firing as JSON to URL (the server must allow webhooks: "
                   "server.webhooks).")
@click.option("--server", default=DEFAULT_URL, show_default=True, metavar="URL",
              help="Realtime endpoint.")
@click.option("--api-key", envvar="STREAMAGENT_API_KEY", default=None,
              help="API key [env: STREAMAGENT_API_KEY].")
@pacing_options(speed_help="Pace of a file: 1 is real time, 2 twice as fast (windows that "
                           "come faster than the server checks them are skipped).",
                sample_help="Windows per second: how often the watches are checked.")
@click.option("--idle", type=float, default=3.0, show_default=True,
              help="Seconds without news after the end before quitting.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per firing.")
def watch(source: str, text_contains: tuple[str, ...], face: tuple[str, ...],
          speech_contains: tuple[str, ...], condition: tuple[str, ...], model: str | None,
          cooldown_s: float | None, confirm_windows: int | None, webhook: str | None,
          server: str, api_key: str | None, speed: float, send_fps: float, sample_fps: float,
          idle: float, as_json: bool) -> None:
    """Watch a video or audio file, or a stream URL (rtsp://, http://, ...), for what the
    flags name, and print each firing: its window of media time, the watch and what fired.

    \b
    streamagent watch door.mp4 --text-contains EXIT
    streamagent watch rtsp://cam/1 --face appears --face leaves --cooldown-s 30
    streamagent watch call.wav --speech-contains "help me"
    streamagent watch porch.mp4 --condition "A parcel lies on the doormat." --model qwen

    Repeat the flags to watch for several things at once. Each watch's id is its flag and
    value (text:EXIT, face:appears, speech:help me, condition:1, ...). A watch fires once per
    event: when its condition starts to hold (for --confirm-windows windows), then not
    again until it has stopped holding and its cooldown is over. Exit status 1: the server
    refused a watch (the message names it) or reported an error.
    """
    from dataclasses import asdict

    from agent.streamer import stream_file

    configure("warning")
    if "://" not in source and not os.path.isfile(source):
        raise click.BadParameter(f"no file {source!r} (or give a URL)", param_hint="URL_OR_FILE")
    if model is not None and not condition:
        raise click.UsageError("--model goes with --condition")
    flags = {"text_contains": text_contains, "face": face,
             "speech_contains": speech_contains, "condition": condition}
    watches = watch_specs(flags, model, cooldown_s, confirm_windows, webhook)

    def show(reply: object) -> None:
        if "streamagent_watch" in reply.metadata:  # type: ignore[attr-defined]
            click.echo(json.dumps(asdict(reply)) if as_json else reply.line())  # type: ignore

    try:
        _, stats = asyncio.run(stream_file(
            source, server, speed=speed, send_fps=send_fps, sample_fps=sample_fps,
            handlers=[], api_key=api_key or os.environ.get("OPENAI_API_KEY"), idle_s=idle,
            on_reply=show, watches=watches))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent {stats.frames} frames and {stats.audio_s:.1f} s of audio", err=True)
    sys.exit(1 if stats.errors else 0)


WATCH_IDS = {"text_contains": "text", "face": "face", "speech_contains": "speech",
             "condition": "condition"}


def watch_specs(flags: dict[str, tuple[str, ...]], model: str | None,
                cooldown_s: float | None, confirm_windows: int | None,
                webhook: str | None = None) -> list[dict[str, Any]]:
    """``streamagent.watches`` entries for the ``watch`` command's flags (kind to values),
    each POSTed to ``webhook`` too when one is given."""
    specs: list[dict[str, Any]] = []
    for kind, values in flags.items():
        for n, value in enumerate(values, 1):
            name = f"{WATCH_IDS[kind]}:{n if kind == 'condition' else value}"[:64]
            if name in [s["id"] for s in specs]:
                raise click.UsageError(f"{name} is given twice")
            spec: dict[str, Any] = {"id": name, kind: value, "cooldown_s": cooldown_s,
                                    "confirm_windows": confirm_windows,
                                    "model": model if kind == "condition" else None,
                                    "webhook": webhook}
            specs.append({k: v for k, v in spec.items() if v is not None})
    if not specs:
        raise click.UsageError("name something to watch for: --text-contains, --face, "
                               "--speech-contains or --condition")
    return specs
