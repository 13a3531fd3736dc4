"""Loading settings: the one place that fixes where values come from.

Sources, highest priority first (`ComponentSettings.settings_customise_sources`):

1. overrides: what the command line set (`load_settings(..., overrides=...)`);
2. environment variables: the component's prefix, then the field path joined with `__`,
   e.g. `AUTOGLM_EDGE_RUNTIME__ROUTING__THRESHOLD=0.4`;
3. the TOML config file given with `--config` (pydantic-settings' own TOML source);
4. the defaults written in the models.

Values merge field by field: an environment variable that sets one field of a group leaves the
group's other fields as the file set them. Any problem, whatever its source, comes out as one
`SettingsError` that names each bad field and where its value came from.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as _SourceError

from shared.dotted import expand_dotted

ENV_NESTED_DELIMITER = "__"
# An environment variable with this value sets the field to None (TOML has no null).
ENV_NONE = "null"
_SECRET_WORDS = ("token", "password", "secret")


class SettingsError(ValueError):
    """Settings that cannot be used; the message says which field, which value, which source."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


# ---------------------------------------------------------------------------------------------
# Field types shared by the components.


def _check_host_port(value: str, *, allow_port_zero: bool = False) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:{port}")
    lowest = 0 if allow_port_zero else 1
    if not lowest <= int(port) <= 65535:
        raise ValueError(f"port must be {lowest}..65535, got {port}")
    return value


def _check_listen(value: str) -> str:
    if value.startswith("unix:"):
        if not value.removeprefix("unix:"):
            raise ValueError("unix: needs a socket path, e.g. unix:/run/autoglm/edge.sock")
        return value
    return _check_host_port(value, allow_port_zero=True)


def _split_list(value: Any) -> Any:
    """Lists from the environment: a JSON array, or comma-separated items."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON array: {exc}") from None
    return [item.strip() for item in text.split(",") if item.strip()]


# "host:port" of a server to call (IPv6 hosts in brackets).
HostPort = Annotated[str, AfterValidator(_check_host_port)]
# Where a server listens: "host:port" (port 0 = any free port) or "unix:PATH".
ListenAddress = Annotated[str, AfterValidator(_check_listen)]
# A path; a leading "~" means the user's home.
ExpandedPath = Annotated[Path, AfterValidator(Path.expanduser)]
# A list of strings; from the environment as a JSON array or "a,b,c".
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
HostPortList = Annotated[list[HostPort], NoDecode, BeforeValidator(_split_list)]


# ---------------------------------------------------------------------------------------------
# Base classes.


class Section(BaseModel):
    """A group of settings inside a component's settings (a TOML table)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, refusing a file it cannot use with a SettingsError that
    names the file (the library itself skips a missing file and lets parse errors through)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path
        if not path.exists():
            raise SettingsError(f"config file {path}: no such file")
        if not path.is_file():
            raise SettingsError(f"config file {path}: cannot read it: not a regular file")
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except OSError as exc:
            raise SettingsError(
                f"config file {self.path}: cannot read it: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {self.path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise SettingsError(f"config file {self.path}: not UTF-8 text: {exc}") from None


# The config file source of the load_settings call in progress (per thread / task).
_CONFIG_FILE: ContextVar[ConfigFileSource | None] = ContextVar("autoglm_config_file", default=None)


class ComponentSettings(BaseSettings):
    """Settings of one component; subclasses set `env_prefix` in their model_config."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        case_sensitive=False,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_parse_none_str=ENV_NONE,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """THE source order, highest priority first; defaults come after all of them."""
        config_file = _CONFIG_FILE.get()
        if config_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, config_file

    @classmethod
    def env_name(cls, *path: str) -> str:
        """The environment variable of a field, e.g. env_name("runtime", "cache", "enabled")."""
        prefix = str(cls.model_config.get("env_prefix", ""))
        return (prefix + ENV_NESTED_DELIMITER.join(path)).upper()


S = TypeVar("S", bound=ComponentSettings)


# ---------------------------------------------------------------------------------------------
# Loading.


def load_settings(
    cls: type[S],
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Build `cls` from overrides > environment > config_file > defaults; raise SettingsError.

    `overrides` holds what the command line set, as nested dicts or dotted keys
    (`{"runtime.routing.threshold": 0.4}`); None values (flags not given) are skipped.
    """
    source = ConfigFileSource(cls, config_file) if config_file is not None else None
    file_data: Mapping[str, Any] = source.toml_data if source is not None else {}
    cli = expand_dotted({k: v for k, v in (overrides or {}).items() if v is not None})
    token = _CONFIG_FILE.set(source)
    try:
        return cls(**cli)
    except ValidationError as exc:
        problems = [
            _describe(cls, error, cli=cli, file_data=file_data, config_file=config_file)
            for error in exc.errors(include_url=False)
        ]
        raise _error(cls, config_file, problems) from None
    except _SourceError as exc:  # an environment variable that should hold JSON but does not
        raise _error(cls, config_file, [_describe_source_error(cls, exc)]) from None
    finally:
        _CONFIG_FILE.reset(token)


def validation_problems(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One readable line per error of validating `model`, e.g. for an MQTT 400 reply."""
    return [_problem(model, error) for error in exc.errors(include_url=False)]


# ---------------------------------------------------------------------------------------------
# Error messages.


def _error(cls: type[BaseModel], config_file: Path | None, problems: list[str]) -> SettingsError:
    where = f" (config file {config_file})" if config_file is not None else ""
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return SettingsError(f"invalid {cls.__name__}{where}:\n{lines}", problems)


def _describe(
    cls: type[ComponentSettings],
    error: Any,
    *,
    cli: Mapping[str, Any],
    file_data: Mapping[str, Any],
    config_file: Path | None,
) -> str:
    keys = [part for part in error["loc"] if isinstance(part, str)]
    if _contains(cli, keys):
        origin = "from the command line"
    elif env := _env_var_for(cls, keys):
        origin = f"from environment variable {env}"
    elif _contains(file_data, keys):
        origin = f"from config file {config_file}"
    else:
        origin = "from the defaults"
    return _problem(cls, error, origin)


def _describe_source_error(cls: type[ComponentSettings], exc: _SourceError) -> str:
    """pydantic-settings names the field only; add the variables that may hold the bad JSON."""
    match = re.search(r'field "(\w+)"', str(exc))
    if match is None:
        return str(exc)
    prefix = cls.env_name(match.group(1))
    names = sorted(n.upper() for n in os.environ if n.upper().startswith(prefix))
    origin = f"from environment variable {', '.join(names)}" if names else "from the environment"
    return f"{match.group(1)}: not valid JSON ({origin})"


def _problem(model: type[BaseModel], error: Any, origin: str = "") -> str:
    """ "field.path: what is wrong (got VALUE, from SOURCE)"; secrets' values are not shown."""
    loc = error["loc"]
    name = ".".join(str(part) for part in loc) or "(top level)"
    notes = [origin] if origin else []
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = f"unknown setting; did you mean {close[0]!r}?" if close else "unknown setting"
        if known and not close:
            notes.insert(0, f"known: {', '.join(known)}")
    else:
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        secret = any(word in name.lower() for word in _SECRET_WORDS)
        shown = _short(value)
        hidden = error["type"] == "missing" or secret or isinstance(value, Mapping)
        if not hidden and shown not in message:
            notes.insert(0, f"got {shown}")
    return f"{name}: {message} ({', '.join(notes)})" if notes else f"{name}: {message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _contains(data: Mapping[str, Any], keys: list[str]) -> bool:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _env_var_for(cls: type[ComponentSettings], keys: list[str]) -> str | None:
    """The environment variable that set keys (or a group holding them), if any."""
    present = {name.upper() for name in os.environ}
    for depth in range(len(keys), 0, -1):
        name = cls.env_name(*keys[:depth])
        if name in present:
            return name
    return None


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at loc."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)
