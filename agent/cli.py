"""The ``streamagent`` command."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from agent.runtime import Runtime

from agent import caption_cli
from agent.cli_media import stream, watch
from agent.cli_media import watch_specs as watch_specs  # re-exported: agent.cli.watch_specs
from agent.config import Config, ModelConfig, load_config
from agent.errors import ConfigError, StreamAgentError
from agent.logs import FORMATS, configure

F = TypeVar("F", bound=Callable[..., Any])


def _logging(level: str, fmt: str = "text") -> None:
    configure(level, fmt)


@functools.cache
def checkpoint_engines() -> tuple[str, ...]:
    """The engines installed plugins register that load checkpoints (those that take model
    families: transformers, vllm, ...)."""
    from agent.plugins import collect, get_plugin_manager

    engines = collect(get_plugin_manager()).engines
    return tuple(sorted(name for name, cls in engines.items() if cls.uses_families))


class EngineChoice(click.Choice):  # type: ignore[type-arg]
    """``checkpoint_engines()``, read when first needed (so that commands that run no model
    do not load the plugins)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return checkpoint_engines()

    @choices.setter
    def choices(self, value: object) -> None:
        pass


def model_options(command: F) -> F:
    """The flags that pick one model: the same on every command that runs one."""
    options = [
        click.option("--source", default=None, metavar="PATH|HUB-ID",
                     help="One multimodal LLM: a checkpoint directory or a hub id. Any "
                          "architecture transformers (or vLLM) loads; see docs/models.md."),
        click.option("--family", default=None,
                     help="With --source: a registered model family (`streamagent plugins` "
                          "lists them); by default the one that claims the checkpoint, or "
                          "none (the generic path)."),
        click.option("--engine", "engine_kind", default=None, show_default="transformers",
                     type=EngineChoice(), callback=lambda _c, _p, v: v or "transformers",
                     help="With --source: the engine that runs it (one an installed plugin "
                          "registers; vllm needs vLLM: docs/gpu.md)."),
        click.option("--device", default="cpu", show_default=True,
                     help="With --source: cuda, cuda:N, mps or cpu."),
        click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
                     help="With --source: the weights' type (auto: the checkpoint's)."),
        click.option("--trust-remote-code", is_flag=True,
                     help="With --source: run code shipped with the checkpoint (MiniCPM-V / "
                          "MiniCPM-o need it). Only for checkpoints you trust."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamagent")
def main() -> None:
    """streamagent: stream camera frames and microphone audio over a websocket, get text back.

    Start a server with `streamagent serve`, then point any OpenAI Realtime client at
    ws://HOST:PORT/v1/realtime?model=default, or stream a file with `streamagent stream FILE`.
    """


@main.command(epilog="""\b
Examples:
  streamagent serve                                   # the embedded CPU models, 127.0.0.1:8000
  streamagent serve --port 0 --log-format json        # a free port, JSON log lines
  streamagent serve --host 0.0.0.0 --api-key KEY      # on the network: require a key
  streamagent serve --source Qwen/Qwen3-VL-2B-Instruct --device cuda --dtype bfloat16
  streamagent serve --source /models/qwen --engine vllm --device cuda \\
      --served-model-name qwen                        # clients ask for ?model=qwen
  streamagent serve --config serve.yaml --access-log  # limits, models, profiles from YAML

The port is bound first (a clash fails at once); GET /healthz answers 503 {"status":
"loading"} until the models are loaded, then 200.""")
@click.option("--host", default=None, metavar="ADDRESS",
              help="Interface to listen on [default: 127.0.0.1]; beyond loopback, set "
                   "--api-key (a warning says so).")
@click.option("--port", type=int, default=None, help="Port [default: 8000; 0 picks a free one].")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML config: server limits, models, handlers, profiles (docs/config.md).")
@click.option("--api-key", envvar="STREAMAGENT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' [env: STREAMAGENT_API_KEY].")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate: serve https/wss (cameras need a secure origin off localhost).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for --tls-cert.")
@model_options
@click.option("--served-model-name", default=None, metavar="NAME",
              help="With --source: the name clients ask for (?model=NAME, /v1/models) "
                   "[default: the family, or default-model].")
@click.option("--handlers", "handler_names", default=None,
              help="With --source: comma-separated handlers [default: describe, video and "
                   "listen, as the checkpoint takes image, video and audio].")
@click.option("--ray-address", default=None,
              help="Join a Ray cluster (e.g. auto) and stream from its Serve model "
                   "applications instead of loading models here. See docs/deploy-ray.md.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="The least severe log lines shown.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(FORMATS),
              help="text: date, milliseconds, level, logger, message; json: one object per "
                   "line (time, level, logger, message, exception).")
@click.option("--access-log", is_flag=True, default=None,
              help="Log each HTTP request and websocket handshake (server.access_log).")
def serve(host: str | None, port: int | None, config_path: str | None, api_key: str | None,
          tls_cert: str | None, tls_key: str | None, source: str | None, family: str | None,
          engine_kind: str, device: str, dtype: str, trust_remote_code: bool,
          served_model_name: str | None, handler_names: str | None, ray_address: str | None,
          log_level: str, log_format: str, access_log: bool | None) -> None:
    """Serve the camera page, the realtime, Gemini Live and chat completions endpoints, and
    the models, until SIGINT/SIGTERM. With no config and no --source: the embedded CPU models
    (text in view, faces, speech)."""
    from agent.plugins import get_plugin_manager
    from agent.runtime import Runtime
    from agent.uvicorn_server import serve_forever

    _logging(log_level, log_format)
    try:
        config = load_config(config_path, host=host, port=port, api_key=api_key,
                             tls_certfile=tls_cert, tls_keyfile=tls_key, access_log=access_log)
        if family is not None or source is not None or served_model_name is not None:
            model = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code)
            config = with_flag_model(config, model, handler_names, served_model_name)
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


def with_flag_model(config: Config, model: ModelConfig, handler_names: str | None,
                    served_name: str | None = None) -> Config:
    """``--source S``: one model (named ``served_name``, else its family, else
    ``default-model``), the default profile, with the handlers for what it takes in (its
    family's modalities, or its processor's)."""
    from agent.families import claiming_family, probe_modalities
    from agent.plugins import collect, get_plugin_manager

    if not model.source:
        raise ConfigError("--family, --engine, --handlers and --served-model-name go with "
                          "--source")
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
    name = served_name or model.family or "default-model"
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
                               "families": sorted(reg.families),
                               "voices": sorted(reg.voices)}, indent=2))
        return
    for p in found:
        version = f" {p['version']}" if p["version"] else ""
        click.echo(f"{p['name']}{version}\n  hooks: {', '.join(p['hooks'])}")
    click.echo(f"engines:  {', '.join(sorted(reg.engines))}")
    click.echo(f"models:   {', '.join(f'{n} ({m.engine})' for n, m in sorted(reg.models.items()))}")
    click.echo(f"handlers: {', '.join(sorted(reg.handlers))}")
    click.echo(f"families: {', '.join(sorted(reg.families))} (any other checkpoint: the "
               "generic path)")
    click.echo(f"voices:   {', '.join(sorted(reg.voices)) or 'none (text only)'}")


@main.command(epilog=caption_cli.EPILOG)
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@caption_cli.output_options
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A config with the model (see --model).")
@click.option("--model", "model_name", default=None, help="The model's name in --config.")
@model_options
@caption_cli.asking_options
@caption_cli.ray_options
def caption(folder: str, config_path: str | None, model_name: str | None,
            source: str | None, family: str | None, engine_kind: str, device: str, dtype: str,
            trust_remote_code: bool, **opts: Any) -> None:
    """Caption every image in FOLDER (millions are fine) with one model: --source, or
    --model NAME from --config. Writes .txt sidecars, JSON Lines, JSON or Parquet; resumable
    after any crash; on one machine or, with --ray, a Ray cluster."""
    from pathlib import Path

    from agent.caption_journal import CaptionError

    _logging("warning")
    try:
        if family or source:
            if not source:
                raise ConfigError("--family goes with --source")
            model = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code)
            name = family or "default-model"
        else:
            config = load_config(config_path)
            if not model_name or model_name not in config.models:
                raise ConfigError(f"--model must name one of {sorted(config.models)}")
            model, name = config.models[model_name], model_name
        caption_cli.run(Path(folder), model, name, opts)
    except (ConfigError, CaptionError) as exc:
        raise click.ClickException(str(exc)) from None


class _TinyHelp(click.Command):
    """``tiny-model --help`` lists the architectures (read from ``agent.tiny`` when asked)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from agent.tiny import FAMILIES

        with formatter.section("Architectures (ARCH)"):
            formatter.write_text(", ".join(sorted(FAMILIES)))
        formatter.write_paragraph()
        formatter.write_text("Example: streamagent tiny-model qwen2-vl /tmp/tiny-qwen2-vl && "
                             "streamagent ask --source /tmp/tiny-qwen2-vl photo.jpg 'what "
                             "is this?'")


@main.command("tiny-model", cls=_TinyHelp)
@click.argument("family", metavar="ARCH")
@click.argument("directory", type=click.Path(file_okay=False))
def tiny_model(family: str, directory: str) -> None:
    """Build a tiny random-weight checkpoint of ARCH's real architecture in DIRECTORY,
    offline (the architectures are listed below). Its output is gibberish: it is for tests
    and for plugin authors. Needs the transformers extra."""
    from agent.tiny import FAMILIES, build

    if family not in FAMILIES:
        raise click.BadParameter(f"choose one of {', '.join(sorted(FAMILIES))}",
                                 param_hint="ARCH")
    try:
        out = build(family, directory)
    except ImportError as exc:
        raise click.ClickException(f"{exc}: pip install 'streamagent[transformers]'") from None
    click.echo(f"built a tiny {family} checkpoint in {out}")


@main.command(epilog="""\b
Examples:
  streamagent ask photo.jpg "what is written here?"        # the embedded CPU models
  streamagent ask talk.wav "what is said?"
  streamagent ask clip.mp4 "what happens?" --source Qwen/Qwen3-VL-2B-Instruct --device cuda""")
@click.argument("args", nargs=-1, required=True, metavar="FILE... QUESTION")
@model_options
@click.option("--handlers", "handler_names", default=None,
              help="With --source: comma-separated handlers [default: as for serve].")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="YAML config: its default profile answers (docs/config.md).")
@click.option("--max-tokens", type=int, default=None,
              help="The longest answer of each model call, in tokens [default: the model's].")
def ask(args: tuple[str, ...], source: str | None, family: str | None, engine_kind: str,
        device: str, dtype: str, trust_remote_code: bool, handler_names: str | None,
        config_path: str | None, max_tokens: int | None) -> None:
    """Ask one QUESTION about pictures, a video or a recording (FILE...), without a server:
    the models load here and the answer streams to stdout, as a chat completions request to
    the default profile would get it."""
    from pathlib import Path

    from agent.ask import ask as answer
    from agent.ask import request_for
    from agent.media_files import Limits
    from agent.parts import TextDelta
    from agent.plugins import get_plugin_manager
    from agent.runtime import Runtime

    _logging("warning")
    *names, question = args
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise click.BadParameter(f"no such file: {', '.join(missing)} (the question comes "
                                 "last)", param_hint="FILE...")
    try:
        config = load_config(config_path)
        if family is not None or source is not None:
            model = ModelConfig(engine=engine_kind, family=family, source=source, device=device,
                                dtype=dtype, trust_remote_code=trust_remote_code)
            config = with_flag_model(config, model, handler_names)
        request = request_for([Path(n) for n in names], question,
                              Limits.of(config.server), max_tokens)
        runtime = Runtime.build(config, get_plugin_manager())

        async def go() -> None:
            async for part in answer(runtime, request):
                if isinstance(part, TextDelta):
                    click.echo(part.text, nl=False)
            click.echo()

        asyncio.run(go())
    except StreamAgentError as exc:
        where = f"{exc.param}: " if exc.param else ""
        raise click.ClickException(where + exc.message) from None


main.add_command(stream)
main.add_command(watch)

if __name__ == "__main__":
    main()
