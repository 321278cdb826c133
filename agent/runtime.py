"""What every session shares: the config, what plugins registered, and the model pool."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from agent.config import Config, MemoryConfig, ModelConfig, ProfileConfig, VoiceConfig
from agent.direct import model_profile
from agent.engine import Engine
from agent.errors import ConfigError, InvalidRequest, UnknownModel
from agent.families import Family, check_modalities
from agent.handler import Handler, HandlerContext, SessionOptions
from agent.options import check_options
from agent.plugins import Registry, collect
from agent.pool import LocalPool, Pool
from agent.voice import ModelVoice, Speech, Voice, pick_voice


class Runtime:
    def __init__(self, config: Config, registry: Registry, pool: Pool) -> None:
        self.config = config
        self.registry = registry
        self.pool = pool
        add_voices(registry, config)
        self._check()

    @classmethod
    def build(cls, config: Config, pm: pluggy.PluginManager) -> Runtime:
        """Collect the plugins' registrations and build the in-process pool from config."""
        registry = collect(pm)
        models = {**registry.models, **config.models}
        config = with_model_profiles(config)
        return cls(config, registry, LocalPool(build_engines(models, registry.engines,
                                                             registry.families)))

    def _check(self) -> None:
        voice = self.config.server.voice
        if voice is not None and voice not in self.registry.voices:
            raise ConfigError(f"server.voice is {voice!r}; voices: "
                              f"{sorted(self.registry.voices) or 'none installed'}")
        for name, profile in self.config.profiles.items():
            for handler in profile.handlers or []:
                if handler not in self.registry.handlers:
                    raise ConfigError(
                        f"profile {name!r} names handler {handler!r}; "
                        f"known handlers: {sorted(self.registry.handlers)}"
                    )
        for name, settings in self.config.handlers.items():
            if name not in self.registry.handlers:
                raise ConfigError(
                    f"config has settings for unknown handler {name!r}; "
                    f"known handlers: {sorted(self.registry.handlers)}"
                )
            check_options(self.registry.handlers[name].options_model, settings.options,
                          f"handlers.{name}.options")
        used = {h for p in self.config.profiles.values() for h in self.default_handlers(p)}
        for name in sorted(used | set(self.config.handlers)):
            model = self.handler_model(name)
            if model is not None and model not in self.pool.names and not any(
                    name in p.models for p in self.config.profiles.values()):
                raise ConfigError(
                    f"handler {name!r} uses model {model!r}, which is not configured; "
                    f"models: {self.pool.names}"
                )
        for pname, profile in self.config.profiles.items():
            for handler, model in profile.models.items():
                if model not in self.pool.names:
                    raise ConfigError(f"profile {pname!r} gives handler {handler!r} model "
                                      f"{model!r}, which is not configured; models: "
                                      f"{self.pool.names}")

    async def start(self) -> None:
        """Load the models, then check that each profile's handlers get the input they need."""
        await self.pool.start()
        for pname, profile in self.config.profiles.items():
            problem = self.modality_problem(self.default_handlers(profile), profile)
            if problem:
                raise ConfigError(f"profile {pname!r}: {problem}")

    def modality_problem(self, handlers: list[str], profile: ProfileConfig) -> str | None:
        """Why one of ``handlers`` cannot run on its model in ``profile`` (``None``: all can)."""
        for name in handlers:
            model = self.model_for(name, profile)
            if model is None or name not in self.registry.handlers:
                continue
            problem = check_modalities(model, self.pool.modalities(model),
                                       {name: self.registry.handlers[name].modality})
            if problem:
                return problem
        return None

    @property
    def profile_names(self) -> list[str]:
        return sorted(self.config.profiles)

    def profile(self, name: str | None) -> ProfileConfig:
        """What a name selects, on every protocol: a profile, or a model (its direct handler);
        anything else is ``model_not_found`` listing the valid names."""
        name = name or "default"
        if name in self.config.profiles:
            return self.config.profiles[name]
        if name in self.pool.names:
            return model_profile(name)
        raise UnknownModel(f"unknown model {name!r}; {self.valid_names()}", param="model")

    def valid_names(self) -> str:
        return (f"profiles: {', '.join(self.profile_names)}; "
                f"models: {', '.join(self.pool.names)}")

    def check_handlers(self, names: list[str], profile: ProfileConfig) -> None:
        """Handlers a client asked for: each must have a model that takes its input."""
        usable = self.usable_handlers(profile)
        unknown = [h for h in names if h not in usable]
        if unknown:
            raise InvalidRequest(f"unknown handlers {unknown} (or no model for them in this "
                                 f"profile); available: {usable}",
                                 param="session.streamagent.handlers")
        if problem := self.modality_problem(names, profile):
            raise InvalidRequest(problem, param="session.streamagent.handlers")

    def check_lora(self, name: str, handlers: list[str], profile: ProfileConfig) -> None:
        """A LoRA adapter a client asked for: one of the handlers' models must have it."""
        models = sorted({m for h in handlers if (m := self.model_for(h, profile))})
        known = [self.pool.adapters(m) for m in models]
        if None in known:  # a pool that cannot tell: the engine checks
            return
        adapters = sorted({a for names in known for a in names or ()})
        if name not in adapters:
            raise InvalidRequest(f"no LoRA adapter {name!r} on this session's models; "
                                 f"adapters: {adapters or 'none'}",
                                 param="session.streamagent.lora")

    def check_models(self, models: dict[str, str], param: str) -> None:
        """Handler -> model choices a client made: both must exist."""
        for handler, model in models.items():
            if handler not in self.registry.handlers:
                raise InvalidRequest(f"no handler named {handler!r}; handlers: "
                                     f"{sorted(self.registry.handlers)}", param=param)
            if model not in self.pool.names:
                raise InvalidRequest(f"no model named {model!r} for handler {handler!r}; "
                                     f"models: {self.pool.names}", param=param)

    def default_handlers(self, profile: ProfileConfig) -> list[str]:
        if profile.handlers is not None:
            return list(profile.handlers)
        return sorted(n for n, h in self.registry.handlers.items() if h.enabled_by_default)

    def handler_model(self, name: str) -> str | None:
        settings = self.config.handlers.get(name)
        if settings is not None and settings.model is not None:
            return settings.model
        return self.registry.handlers[name].default_model

    def memory_budgets(self) -> dict[str, MemoryConfig]:
        """Each model's timeline budget (``models.NAME.memory``), registered models too."""
        return {name: model.memory
                for name, model in {**self.registry.models, **self.config.models}.items()}

    def model_for(self, handler: str, profile: ProfileConfig) -> str | None:
        return profile.models.get(handler) or self.handler_model(handler)

    def usable_handlers(self, profile: ProfileConfig) -> list[str]:
        """Handlers a session of this profile may turn on: those with a model."""
        return sorted(h for h in self.registry.handlers
                      if self.model_for(h, profile) in self.pool.names)

    def voice(self, name: str | None) -> Voice:
        """A voice by the name a session gave (``None``: the default), or ``InvalidRequest``."""
        return pick_voice(self.registry.voices, name, self.config.server.voice)

    def speech(self) -> Speech | None:
        """A new conversation's speech (off until it asks for audio); ``None``: no voice is
        installed."""
        return Speech(self.voice(None)) if self.registry.voices else None

    def make_handler(self, name: str, session_id: str, profile: ProfileConfig | None = None,
                     session: SessionOptions | None = None) -> Handler:
        cls = self.registry.handlers[name]
        settings = self.config.handlers.get(name)
        options = settings.options if settings else {}
        model = (profile.models.get(name) if profile else None) or self.handler_model(name)
        return cls(HandlerContext(self.pool, model, options, session_id,
                                  session if session is not None else SessionOptions()))


def add_voices(registry: Registry, config: Config) -> None:
    """The config's ``voices``, each read by the voice engine it names, into ``registry``.
    Engine ``model`` is built in: a model of the config that speaks itself
    (``agent.voice.ModelVoice``); what other models say is said by the default voice."""
    engines = {"model": _model_voice({*registry.models, *config.models}),
               **registry.voice_engines}
    for name, voice in config.voices.items():
        if voice.engine not in engines:
            raise ConfigError(f"voices.{name}.engine is {voice.engine!r}; voice engines: "
                              f"{sorted(engines)}")
        made = engines[voice.engine](name, voice)
        if registry.voices.get(name, made) is not made:
            raise ConfigError(f"voices.{name}: a plugin already has a voice named {name!r}")
        registry.voices[name] = made
    others = {n: v for n, v in registry.voices.items() if not isinstance(v, ModelVoice)}
    fallback = others.get(config.server.voice or "") or (others[min(others)] if others else None)
    for made in registry.voices.values():
        if isinstance(made, ModelVoice):
            made.fallback = fallback


def _model_voice(models: set[str]) -> Callable[[str, VoiceConfig], Voice]:
    def make(name: str, voice: VoiceConfig) -> Voice:
        speaker = voice.options.get("speaker")
        if set(voice.options) != {"speaker"} or not isinstance(speaker, str) or not speaker:
            raise ConfigError(f"voices.{name}.options: a model's voice takes one option, "
                              "speaker (the name of one of the model's speakers, e.g. Ethan)")
        if voice.model not in models:
            raise ConfigError(f"voices.{name}.model is {voice.model!r}: name a model "
                              f"({', '.join(sorted(models)) or 'none'})")
        return ModelVoice(name, voice.model, speaker, voice.description)

    return make


def with_model_profiles(config: Config) -> Config:
    """Each model that lists handlers becomes a profile of its name; the first one is the
    default unless the config sets profiles itself (the embedded default stays as
    ``embedded``)."""
    derived = {
        name: ProfileConfig(handlers=list(model.handlers),
                            models={h: name for h in model.handlers})
        for name, model in config.models.items() if model.handlers
    }
    if not derived:
        return config
    profiles = {**derived, **config.profiles}
    if "profiles" not in config.model_fields_set:
        profiles["embedded"] = config.profiles["default"]
        profiles["default"] = next(iter(derived.values()))
    return config.model_copy(update={"profiles": profiles})


def build_engines(
    models: dict[str, ModelConfig], kinds: dict[str, type[Engine]],
    families: dict[str, Family] | None = None,
) -> dict[str, Engine]:
    """One engine per model; engines that serve model families get the registered ones."""
    engines = {}
    for name, model in models.items():
        if model.engine not in kinds:
            raise ConfigError(
                f"model {name!r} uses engine {model.engine!r}; known engines: {sorted(kinds)}"
            )
        cls = kinds[model.engine]
        check_options(cls.options_model, model.options, f"models.{name}.options")
        if cls.uses_families and families is not None:
            engines[name] = cls(name, model, families=families)  # type: ignore[call-arg]
        else:
            engines[name] = cls(name, model)
    return engines
