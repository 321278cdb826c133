"""The flags of ``streamagent caption`` and what the command does with them (the command itself
is in agent/cli.py, beside the others)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.config import ModelConfig

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = """\b
Examples:
  streamagent caption photos/ --source Qwen/Qwen2-VL-2B-Instruct --engine vllm     # photos/*.txt
  streamagent caption photos/ -o photos/metadata.jsonl --source microsoft/Florence-2-large \\
      --trust-remote-code                      # Hugging Face imagefolder metadata
  streamagent caption photos/ -o caps.parquet --source S --prefix "ohwx, "  # trigger word
  streamagent caption /shared/photos -o /shared/caps.parquet --source S --engine vllm \\
      --device cuda --ray --ray-address auto --actors 8 --num-gpus 1     # a Ray cluster
\b
Rerun the same command after a crash or kill -9: it goes on where it stopped (images already
captioned are skipped; failed ones are tried again). docs/captioning.md has the details."""


def _options(command: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def output_options(command: F) -> F:
    """Where the captions go."""
    return _options(command, [
        click.option("-o", "--output", default=None, type=click.Path(dir_okay=True),
                     help="The output file: .jsonl (one line per image, appended), .json (one "
                          "file, small folders) or .parquet (a directory of part files). "
                          "Without it: a .txt sidecar beside each image."),
        click.option("--format", "fmt", default=None,
                     type=click.Choice(["txt", "jsonl", "json", "parquet"]),
                     help="The output format [default: from -o's suffix; txt without -o]."),
        click.option("--ext", default=".txt", show_default=True,
                     help="The sidecars' extension (--format txt): cat.png -> cat.txt."),
        click.option("--prefix", default="",
                     help="Written before each caption, as is (a trigger word: 'ohwx, ')."),
        click.option("--suffix", default="", help="Written after each caption, as is."),
        click.option("--overwrite/--skip-existing", default=False,
                     help="--skip-existing (default): images already captioned in the output "
                          "are left alone, so a rerun resumes. --overwrite: start over "
                          "(replace the output, or every sidecar)."),
        click.option("--errors", "errors_path", default=None, type=click.Path(dir_okay=False),
                     help="The errors log (JSON Lines: file_name, error) [default: beside the "
                          "output as NAME.errors.jsonl; txt: FOLDER/captions.errors.jsonl; "
                          "json: inside the file]."),
    ])


def asking_options(command: F) -> F:
    """What each image is asked, and how many at once."""
    return _options(command, [
        click.option("--prompt", default=None,
                     help="Ask every image this instead [default: the model's own way: its "
                          "caption task for BLIP-2 (no text), Florence-2 "
                          "(<MORE_DETAILED_CAPTION>) and PaliGemma (caption en); JoyCaption's "
                          "system and user prompts; else 'Describe this image.']."),
        click.option("--task", default=None,
                     help="A prompt-style checkpoint's own task prompt, e.g. '<CAPTION>' or "
                          "'<DETAILED_CAPTION>' (Florence-2), 'caption es' (PaliGemma) "
                          "[default: caption, or none with --prompt]."),
        click.option("--system", default=None,
                     help="A system prompt for chat models [default: JoyCaption's for "
                          "JoyCaption, none otherwise]."),
        click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1),
                     help="The longest caption, in tokens."),
        click.option("--temperature", default=None, type=click.FloatRange(0),
                     help="Sample at this temperature (0: greedy) [default: the model "
                          "config's decoding: greedy, or JoyCaption's 0.6]."),
        click.option("--top-p", default=None, type=click.FloatRange(0, 1, min_open=True),
                     help="Nucleus sampling's top-p, when sampling."),
        click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1),
                     help="Images in flight at once (per Ray actor with --ray): vLLM batches "
                          "them; a transformers engine takes them one by one."),
        click.option("--progress/--no-progress", default=True,
                     help="A progress bar (images/s, ETA, errors) on stderr."),
    ])


def ray_options(command: F) -> F:
    """A cluster run on Ray Data."""
    return _options(command, [
        click.option("--ray", "use_ray", is_flag=True,
                     help="Run on a Ray cluster with Ray Data: the model in --actors actors, "
                          "the images read by them (FOLDER must be on storage every node "
                          "sees at the same path). Same formats and resume rules."),
        click.option("--ray-address", default=None,
                     help="With --ray: the cluster ('auto': the one this machine belongs "
                          "to; ray://HOST:10001) [default: a local one, started here]."),
        click.option("--actors", default=1, show_default=True, type=click.IntRange(1),
                     help="With --ray: model actors (one per GPU, or per --num-cpus cores)."),
        click.option("--num-gpus", default=0.0, show_default=True, type=click.FloatRange(0),
                     help="With --ray: GPUs per model actor."),
        click.option("--num-cpus", default=1.0, show_default=True, type=click.FloatRange(0),
                     help="With --ray: CPUs per model actor."),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
                     help="With --ray: images handed to an actor at once (it runs "
                          "--concurrency of them at a time)."),
    ])


def decoding_options(max_tokens: int, temperature: float | None,
                     top_p: float | None) -> dict[str, Any]:
    """Request options (agent/families.py ``decoding``): sampling when a temperature is set."""
    out: dict[str, Any] = {"max_new_tokens": max_tokens}
    if temperature is not None:
        out.update(do_sample=temperature > 0, **({"temperature": temperature}
                                                  if temperature > 0 else {}))
    if top_p is not None:
        out["top_p"] = top_p
    return out


def run(folder: Path, model: ModelConfig, name: str, opts: dict[str, Any]) -> None:
    """Caption ``folder`` as the flags in ``opts`` say, and print the summary."""
    from agent.caption import caption_folder, own_ask
    from agent.caption_sinks import infer_format, open_sink

    out = Path(opts["output"]) if opts["output"] else None
    fmt = infer_format(opts["fmt"], out)
    sink = open_sink(fmt, folder, out, ext=opts["ext"], overwrite=opts["overwrite"],
                     errors=Path(opts["errors_path"]) if opts["errors_path"] else None,
                     track=opts["use_ray"])
    ask = own_ask(model.source or "", opts["prompt"], opts["task"], opts["system"],
                  decoding_options(opts["max_tokens"], opts["temperature"], opts["top_p"]),
                  opts["prefix"], opts["suffix"])
    if opts["use_ray"]:
        from agent.caption_ray import RayOptions, caption_on_ray

        result = caption_on_ray(folder, sink, ask, name, model, RayOptions(
            address=opts["ray_address"], actors=opts["actors"], num_cpus=opts["num_cpus"],
            num_gpus=opts["num_gpus"], batch_size=opts["batch_size"],
            concurrency=opts["concurrency"], progress=opts["progress"]))
        click.echo(result.summary())
        return
    from agent.plugins import collect, get_plugin_manager

    kinds = collect(get_plugin_manager()).engines
    if model.engine not in kinds:
        from agent.errors import ConfigError

        raise ConfigError(f"unknown engine {model.engine!r}; known: {sorted(kinds)}")
    engine = kinds[model.engine](name, model)

    async def go() -> str:
        try:  # the model loads when a picture first needs it: a finished run loads none
            done = await caption_folder(engine, folder, concurrency=opts["concurrency"],
                                        progress=opts["progress"], start=engine.start,
                                        sink=sink, ask=ask)
        finally:
            await engine.close()
        return done.summary()

    click.echo(asyncio.run(go()))
