"""The ``streamagent`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from agent.runtime import Runtime

from agent.config import Config, ModelConfig, load_config
from agent.errors import ConfigError

DEFAULT_URL = "ws://127.0.0.1:8000/v1/realtime?model=default"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamagent")
def main() -> None:
    """streamagent: stream camera frames and microphone audio over a websocket, get text back.

    Start a server with `streamagent serve`, then point any OpenAI Realtime client at
    ws://HOST:PORT/v1/realtime?model=default, or stream a file with `streamagent stream FILE`.
    """


@main.command()
@click.option("--host", default=None, help="Interface to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8000; 0 picks a free one].")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML config: server limits, models, handlers, profiles (docs/config.md).")
@click.option("--api-key", envvar="STREAMAGENT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' [env: STREAMAGENT_API_KEY].")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate: serve https/wss (cameras need a secure origin off localhost).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for --tls-cert.")
@click.option("--source", default=None,
              help="Serve one multimodal LLM: its checkpoint, a directory or a hub id. Any "
                   "architecture transformers (or vLLM) loads; see docs/models.md.")
@click.option("--family", default=None,
              help="With --source: a registered model family (`streamagent plugins` lists "
                   "them); by default, the one that claims the checkpoint, or none.")
@click.option("--engine", "engine_kind", default="transformers", show_default=True,
              help="With --source: the engine that runs it (transformers or vllm).")
@click.option("--handlers", "handler_names", default=None,
              help="With --source: comma-separated handlers [default: describe, video and "
                   "listen, as the checkpoint takes image, video and audio].")
@click.option("--device", default="cpu", show_default=True, help="cuda, cuda:N, mps or cpu.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "bfloat16", "float16", "float32"]))
@click.option("--trust-remote-code", is_flag=True,
              help="Allow code shipped with the checkpoint (MiniCPM-V / MiniCPM-o).")
@click.option("--ray-address", default=None,
              help="Join a Ray cluster (e.g. auto) and stream from its Serve model "
                   "applications instead of loading models here. See docs/deploy-ray.md.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(host: str | None, port: int | None, config_path: str | None, api_key: str | None,
          tls_cert: str | None, tls_key: str | None, source: str | None, family: str | None,
          engine_kind: str, handler_names: str | None, device: str, dtype: str,
          trust_remote_code: bool, ray_address: str | None, log_level: str) -> None:
    """Load the models and serve the camera page and the realtime endpoint until
    SIGINT/SIGTERM. With no config and no --family: the embedded CPU models."""
    from agent.plugins import get_plugin_manager
    from agent.runtime import Runtime
    from agent.uvicorn_server import serve_forever

    _logging(log_level)
    try:
        config = load_config(config_path, host=host, port=port, api_key=api_key,
                             tls_certfile=tls_cert, tls_keyfile=tls_key)
        if family is not None or source is not None:
            model = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code)
            config = with_flag_model(config, model, handler_names)
        if ray_address is not None:
            runtime = ray_runtime(config, ray_address)
        else:
            runtime = Runtime.build(config, get_plugin_manager())
        asyncio.run(serve_forever(runtime))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve: {exc}") from None


def ray_runtime(config: Config, address: str) -> Runtime:
    """The gateway as its own process on a Ray cluster: the models (the plugins' defaults and
    the config's) are the Serve applications of those names, deployed from serve_config.yaml;
    a model with no application is left out (a profile that needs it fails at start-up)."""
    import ray
    from ray import serve

    from agent.plugins import collect, get_plugin_manager
    from agent.ray.pool import RayPool
    from agent.runtime import Runtime, with_model_profiles

    registry = collect(get_plugin_manager())
    ray.init(address=address, log_to_driver=False)
    wanted = sorted({*registry.models, *config.models})
    try:
        deployed = set(serve.status().applications)
        names = [n for n in wanted if n in deployed]
        if missing := sorted(set(wanted) - deployed):
            click.echo(f"models with no Serve application, not served: {missing}", err=True)
        pool = RayPool(names)
    except Exception as exc:
        raise ConfigError(f"cannot reach the Serve applications {wanted}: {exc}") from exc
    return Runtime(with_model_profiles(config), registry, pool)


def with_flag_model(config: Config, model: ModelConfig, handler_names: str | None) -> Config:
    """``--source S``: one model, the default profile, with the handlers for what it takes in
    (its family's modalities, or its processor's)."""
    from agent.families import claiming_family, probe_modalities
    from agent.plugins import collect, get_plugin_manager

    if not model.source:
        raise ConfigError("--family, --engine and --handlers go with --source")
    if handler_names is not None:
        handlers = [h.strip() for h in handler_names.split(",") if h.strip()]
    else:
        families = collect(get_plugin_manager()).families
        family = families.get(model.family) if model.family else claiming_family(
            model.source, model.trust_remote_code, families)
        takes = family.modalities if family and family.modalities is not None else None
        if takes is None:
            takes = probe_modalities(model.source, model.trust_remote_code)
        handlers = [h for m, h in LLM_HANDLERS.items() if m in takes]
    name = model.family or "default-model"
    model = model.model_copy(update={"handlers": handlers})
    return config.model_copy(update={"models": {**config.models, name: model}})


LLM_HANDLERS = {"image": "describe", "video": "video", "audio": "listen"}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins, the hooks each implements, and what they registered."""
    from agent.plugins import collect, describe, get_plugin_manager

    pm = get_plugin_manager()
    found, reg = describe(pm), collect(pm)
    if as_json:
        click.echo(json.dumps({"plugins": found, "engines": sorted(reg.engines),
                               "models": sorted(reg.models), "handlers": sorted(reg.handlers),
                               "families": sorted(reg.families)}, indent=2))
        return
    for p in found:
        version = f" {p['version']}" if p["version"] else ""
        click.echo(f"{p['name']}{version}\n  hooks: {', '.join(p['hooks'])}")
    click.echo(f"engines:  {', '.join(sorted(reg.engines))}")
    click.echo(f"models:   {', '.join(f'{n} ({m.engine})' for n, m in sorted(reg.models.items()))}")
    click.echo(f"handlers: {', '.join(sorted(reg.handlers))}")
    click.echo(f"families: {', '.join(sorted(reg.families))} (any other checkpoint: the "
               "generic path)")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default=DEFAULT_URL, show_default=True, help="Realtime endpoint.")
@click.option("--api-key", envvar="STREAMAGENT_API_KEY", default=None,
              help="API key [env: STREAMAGENT_API_KEY].")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="Pace: 1 is real time, 2 twice as fast.")
@click.option("--send-fps", type=float, default=10.0, show_default=True,
              help="Video frames sent per second of media.")
@click.option("--sample-fps", type=float, default=1.0, show_default=True,
              help="Windows per second the server samples.")
@click.option("--handlers", default=None, help="Comma-separated handlers [default: the "
              "server's].")
@click.option("--idle", type=float, default=3.0, show_default=True,
              help="Seconds without news after the end before quitting.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per response.")
def stream(path: str, url: str, api_key: str | None, speed: float, send_fps: float,
           sample_fps: float, handlers: str | None, idle: float, as_json: bool) -> None:
    """Stream a video or audio file (mp4, webm, avi, wav, ...) and print each response with
    its window of media time and its handler."""
    from dataclasses import asdict

    from agent.streamer import stream_file

    _logging("warning")

    def show(reply: object) -> None:
        line = json.dumps(asdict(reply)) if as_json else reply.line()  # type: ignore
        click.echo(line)

    names = [h.strip() for h in handlers.split(",") if h.strip()] if handlers else None
    try:
        _, stats = asyncio.run(stream_file(
            path, url, speed=speed, send_fps=send_fps, sample_fps=sample_fps, handlers=names,
            api_key=api_key or os.environ.get("OPENAI_API_KEY"), idle_s=idle, on_reply=show))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent {stats.frames} frames and {stats.audio_s:.1f} s of audio"
               + (f"; skipped {stats.bad_packets} bad packets" if stats.bad_packets else ""),
               err=True)
    sys.exit(1 if stats.errors and not as_json else 0)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="captions.json: resumable (images already in it are skipped).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A config with the model (see --model).")
@click.option("--model", "model_name", default=None, help="The model's name in --config.")
@click.option("--source", default=None, help="Or one model: a directory or a hub id.")
@click.option("--family", default=None, help="With --source: its family, if it needs one.")
@click.option("--engine", "engine_kind", default="transformers", show_default=True,
              type=click.Choice(["transformers", "vllm"]))
@click.option("--device", default="cpu", show_default=True)
@click.option("--prompt", default="Describe this image in one sentence.", show_default=True)
@click.option("--concurrency", default=16, show_default=True,
              help="Requests in flight (vLLM batches them).")
@click.option("--max-tokens", default=64, show_default=True)
def caption(folder: str, output: str, config_path: str | None, model_name: str | None,
            family: str | None, source: str | None, engine_kind: str, device: str,
            prompt: str, concurrency: int, max_tokens: int) -> None:
    """Caption every image in FOLDER (thousands are fine) with any configured model."""
    from pathlib import Path

    from agent.caption import caption_folder
    from agent.config import GenerationConfig
    from agent.plugins import collect, get_plugin_manager

    _logging("warning")
    try:
        if family or source:
            if not source:
                raise ConfigError("--family goes with --source")
            model = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                                trust_remote_code=(family or "").startswith("minicpm"),
                                generation=GenerationConfig(max_new_tokens=max_tokens))
            name = family or "default-model"
        else:
            config = load_config(config_path)
            if not model_name or model_name not in config.models:
                raise ConfigError(f"--model must name one of {sorted(config.models)}")
            model, name = config.models[model_name], model_name
        kinds = collect(get_plugin_manager()).engines
        if model.engine not in kinds:
            raise ConfigError(f"unknown engine {model.engine!r}; known: {sorted(kinds)}")
        engine = kinds[model.engine](name, model)

        async def go() -> None:
            await engine.start()
            try:
                run = await caption_folder(engine, Path(folder), Path(output), prompt,
                                           concurrency)
            finally:
                await engine.close()
            click.echo(f"captioned {run.done} images in {run.seconds:.1f} s "
                       f"({run.images_per_s:.2f} images/s); {run.skipped} already done; "
                       f"{len(run.bad)} bad" + "".join(f"\n  bad: {k}: {v}"
                                                      for k, v in sorted(run.bad.items())))

        asyncio.run(go())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("tiny-model")
@click.argument("family", metavar="ARCH")
@click.argument("directory", type=click.Path(file_okay=False))
def tiny_model(family: str, directory: str) -> None:
    """Build a tiny random-weight checkpoint of FAMILY's real architecture in DIRECTORY,
    offline (see `streamagent tiny-model --help` for the list: Qwen2/2.5/3-VL, Qwen2-Audio,
    Qwen2.5/3-Omni, Qwen3-ASR, LLaVA-OneVision, MiniCPM-V/o). Its output is gibberish: it is
    for tests and for plugin authors."""
    from agent.tiny import FAMILIES, build

    if family not in FAMILIES:
        raise click.BadParameter(f"choose one of {', '.join(sorted(FAMILIES))}",
                                 param_hint="FAMILY")
    try:
        out = build(family, directory)
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'streamagent[transformers]'") from None
    click.echo(f"built a tiny {family} checkpoint in {out}")


if __name__ == "__main__":
    main()
