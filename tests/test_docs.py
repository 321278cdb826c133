"""The docs tell the truth about the repository: files they point to exist, the CLI flags and
config fields they name exist, and every config field is documented."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from agent import config
from agent.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [p for d in ("agent", "plugins", "tests", "benchmarks", "scripts", "examples")
           for p in sorted((ROOT / d).rglob("*.py"))]
PATH = re.compile(r"(?<![\w./-])((?:agent|plugins|tests|docs|benchmarks|scripts|examples|deploy|"
                  r"notes)/[\w./-]*\w\.(?:py|md|yaml|yml|json|js|html|toml|txt|jinja))")
BARE_MD = re.compile(r"(?<![\w./-])([A-Z][\w-]*\.md)\b")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]+)")
FIELD = re.compile(r"`(server|models\.\w+|profiles\.\w+|handlers\.\w+)\.(?!py`)(\w+)")


def repo_files() -> set[str]:
    """The files git tracks that are in the working tree: an ignored copy (build/lib/...)
    or a file not yet added cannot satisfy a pointer."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    return {f for f in tracked if f and (ROOT / f).is_file()}


def test_every_file_a_doc_or_comment_points_to_exists() -> None:
    files = repo_files()
    names = {Path(f).name for f in files}
    missing = []
    for path in DOCS + SOURCES:
        text = path.read_text()
        for ref in PATH.findall(text):
            if ref not in files and not any(f.endswith("/" + ref) for f in files):
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
        for ref in BARE_MD.findall(text):
            if ref not in names:
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "pointers to files the repository does not have:\n" + "\n".join(missing)


def cli_flags() -> set[str]:
    flags: set[str] = {"--help", "--version"}

    def walk(command: click.Command) -> None:
        for param in command.params:
            flags.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(cli)
    return flags


def test_every_streamagent_flag_in_the_docs_exists() -> None:
    known, unknown = cli_flags(), []
    for path in DOCS:
        for line in path.read_text().splitlines():
            if "streamagent " not in line:
                continue
            for flag in FLAG.findall(line.split("streamagent ", 1)[1]):
                if flag not in known:
                    unknown.append(f"{path.relative_to(ROOT)}: {flag}")
    assert not unknown, "CLI flags the command does not have:\n" + "\n".join(unknown)


SECTIONS: dict[str, type[BaseModel]] = {
    "server": config.ServerConfig, "models": config.ModelConfig,
    "profiles": config.ProfileConfig, "handlers": config.HandlerConfig,
}


def test_every_config_field_named_in_the_docs_exists() -> None:
    unknown = []
    for path in DOCS:
        for section, name in FIELD.findall(path.read_text()):
            model = SECTIONS[section.split(".")[0]]
            if name not in model.model_fields and name not in config.GenerationConfig.model_fields:
                unknown.append(f"{path.relative_to(ROOT)}: {section}.{name}")
    assert not unknown, "config fields that do not exist:\n" + "\n".join(unknown)


def yaml_keys(text: str) -> dict[str, set[str]]:
    """Keys of the config example in docs/config.md, by top-level section (one level down
    for server; two for models/handlers/profiles, whose first level is a name)."""
    block = text.split("```yaml", 1)[1].split("```", 1)[0]
    keys: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        match = re.match(r"^( *)(\w+):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        if depth == 0:
            section = match.group(2)
        elif (depth == 1 and section == "server") or (depth == 2 and section != "server"):
            keys.setdefault(section, set()).add(match.group(2))
    return keys


def test_the_config_example_names_only_real_fields() -> None:
    for section, names in yaml_keys((ROOT / "docs" / "config.md").read_text()).items():
        model = SECTIONS[section]
        assert names <= set(model.model_fields), (section, names - set(model.model_fields))


WHERE: dict[type[BaseModel], tuple[str, ...]] = {  # where each model's fields sit in the tree
    config.ServerConfig: ("server",),
    config.ModelConfig: ("models", "*"),
    config.GenerationConfig: ("models", "*", "generation"),
    config.MemoryConfig: ("models", "*", "memory"),
    config.HandlerConfig: ("handlers", "*"),
    config.GatingConfig: ("handlers", "*", "gating"),
    config.ProfileConfig: ("profiles", "*"),
}
NAMED = {"models", "handlers", "profiles"}
"""Sections whose first level is a name the user picks (``*`` above)."""
ROW_KEY = re.compile(r"^\| *`((?:server|models|handlers|profiles)\.[\w.]+)`", re.M)


def key_paths(tree: object, at: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key of a YAML tree, as its path, with the user's names as ``*``."""
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        path = (*at, "*" if len(at) == 1 and at[0] in NAMED else str(key))
        yield path
        yield from key_paths(value, path)


def documented_keys(text: str) -> set[tuple[str, ...]]:
    """The config keys a page documents: the keys of its YAML examples at their paths, and
    table rows whose first cell is a key's dotted path (``models.NAME.workers``)."""
    import yaml

    keys: set[tuple[str, ...]] = set()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        keys.update(key_paths(yaml.safe_load(block)))
    for dotted in ROW_KEY.findall(text):
        parts = dotted.split(".")
        keys.add(tuple("*" if i == 1 and parts[0] in NAMED else p
                       for i, p in enumerate(parts)))
    return keys


def undocumented(model: type[BaseModel], text: str) -> list[str]:
    keys, where = documented_keys(text), WHERE[model]
    return [".".join((*where, name)) for name in model.model_fields
            if (*where, name) not in keys]


CONFIG_DOCS = [ROOT / "docs" / "config.md", ROOT / "docs" / "models.md"]


@pytest.mark.parametrize("model", list(WHERE), ids=lambda m: m.__name__)
def test_every_config_field_is_documented(model: type[BaseModel]) -> None:
    """As a key at its path in a YAML example or a table row of docs/config.md or
    docs/models.md, not as a word somewhere in the prose."""
    text = "\n".join(p.read_text() for p in CONFIG_DOCS)
    missing = undocumented(model, text)
    assert not missing, f"config fields not documented as keys: {missing}"


def test_a_field_named_only_in_prose_is_undocumented() -> None:
    text = "\n".join(p.read_text() for p in CONFIG_DOCS)
    cut = re.sub(r"^ *live: .*\n", "", text, flags=re.M)
    assert "live" in cut.replace("live:", "")  # still a word in the prose
    assert undocumented(config.ProfileConfig, cut) == ["profiles.*.live"]


CONFIG_MD = ROOT / "docs" / "config.md"
STATED = {  # the parts of docs/config.md's example that state defaults, and what holds them
    ("server",): config.ServerConfig,
    ("profiles", "default"): config.ProfileConfig,
    ("handlers", "text_in_view", "gating"): config.GatingConfig,
    ("models", "ocr"): config.ModelConfig,
    ("models", "qwen", "generation"): config.GenerationConfig,
}
EXAMPLES = {"engine", "options", "source", "family", "device", "handlers", "generation"}
"""Fields the example fills in with a value of its own, not the default."""


def stated_default_mismatches(text: str) -> list[str]:
    """Where the example config of docs/config.md states a default the code does not have."""
    import yaml

    example = yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])
    wrong = []
    for path, model in STATED.items():
        section = example
        for key in path:
            section = section[key]
        for name, stated in section.items():
            if name in EXAMPLES and model is not config.ProfileConfig:
                continue
            default = model.model_fields[name].get_default(call_default_factory=True)
            if stated != default:
                wrong.append(f"{'.'.join(path)}.{name}: docs say {stated!r}, code {default!r}")
    return wrong


def test_the_defaults_docs_config_states_are_the_codes() -> None:
    assert not stated_default_mismatches(CONFIG_MD.read_text())


def test_a_changed_default_is_caught() -> None:
    text = CONFIG_MD.read_text().replace("max_sessions: 64", "max_sessions: 65", 1)
    assert stated_default_mismatches(text) == ["server.max_sessions: docs say 65, code 64"]


def test_every_server_field_has_its_default_in_docs_config() -> None:
    import yaml

    example = yaml.safe_load(CONFIG_MD.read_text().split("```yaml", 1)[1].split("```", 1)[0])
    assert set(example["server"]) == set(config.ServerConfig.model_fields)


def test_the_ray_application_args_table_states_the_codes_defaults() -> None:
    from agent.ray.apps import GatewayAppArgs, ModelAppArgs

    rows = re.findall(r"^\| (`agent\.ray\.apps:\w+`)? *\| `(\w+)` \| ([^|]+) \|",
                      CONFIG_MD.read_text(), re.M)
    app, wrong = "", []
    for name, arg, stated in rows:
        app = name or app
        model = GatewayAppArgs if "gateway" in app else ModelAppArgs
        default = model.model_fields[arg].get_default(call_default_factory=True)
        if stated.strip() in ("—", "defaults"):
            continue
        if yaml_value(stated) != default:
            wrong.append(f"{app} {arg}: docs say {stated.strip()}, code {default!r}")
    assert rows and not wrong


def yaml_value(text: str) -> object:
    import yaml

    return yaml.safe_load(text.strip().strip("`"))


METRIC_ROW = re.compile(r"^\| `(\w+?)(\*?)` \| *(\w*) *\| *([^|]*)\|", re.M)


def test_the_metrics_table_is_the_registry() -> None:
    from agent import metrics

    documented = {name: (kind, sorted(re.findall(r"`(\w+)`", labels)))
                  for name, star, kind, labels in METRIC_ROW.findall(CONFIG_MD.read_text())
                  if not star}
    prefixes = [name for name, star, _, _ in METRIC_ROW.findall(CONFIG_MD.read_text()) if star]
    registered = {}
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("streamagent_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
            registered[name] = (family.type, labels)
        else:
            assert any(family.name.startswith(p) for p in prefixes), family.name
    for m in metrics._ALL:  # labelled metrics show no samples until first used
        name = m.name + ("_total" if m.kind == "counter" else "")
        registered[name] = (m.kind, sorted(m.labels))
    assert documented == registered
    assert set(prefixes) == {"process_", "python_gc_"}
