"""The one settings object: environment variables and `.env`, validated at start-up."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import SettingsError


class Mode(StrEnum):
    CHAIN = "chain"
    NATIVE = "native"


CommaList = Annotated[tuple[str, ...], NoDecode]

MAX_VOTES = 9  # PONDER_VOTES, `/reason votes:` and `ponder ask --votes` at most

# The headers vllm-router's consistent_hash policy keys on (0.1.17; the first non-empty one
# wins, else the body's `session_params.session_id`, else every request goes to one replica).
# PONDER_SESSION_HEADER must be one of them: any other header spreads nothing and keeps no chain
# on its replica, silently. `tests/test_router.py` checks this list against the real router.
ROUTER_SESSION_HEADERS = ("x-session-id", "x-user-id", "x-tenant-id", "x-correlation-id",
                          "x-request-id", "x-trace-id")


class Settings(BaseSettings):
    # An empty value means "not set": `.env.example` copied as it is must leave Discord and
    # Slack off, not switch them on with blank tokens.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True,
        env_ignore_empty=True,
    )

    # Model server
    openai_base_url: str = Field("http://localhost:8000/v1", validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr = Field(SecretStr("EMPTY"), validation_alias="OPENAI_API_KEY")
    model: str = Field("Qwen2.5-7B-Instruct", validation_alias="PONDER_MODEL")
    mode: Mode = Field(Mode.CHAIN, validation_alias="PONDER_MODE")
    max_steps: int = Field(25, ge=1, le=200, validation_alias="PONDER_MAX_STEPS")
    min_steps: int = Field(3, ge=1, le=50, validation_alias="PONDER_MIN_STEPS")
    temperature: float = Field(0.2, ge=0.0, le=2.0, validation_alias="PONDER_TEMPERATURE")
    step_max_tokens: int = Field(1024, ge=16, validation_alias="PONDER_STEP_MAX_TOKENS")
    answer_max_tokens: int = Field(2048, ge=16, validation_alias="PONDER_ANSWER_MAX_TOKENS")
    request_timeout: float = Field(120.0, gt=0, validation_alias="PONDER_REQUEST_TIMEOUT")
    connect_timeout: float = Field(5.0, gt=0, validation_alias="PONDER_CONNECT_TIMEOUT")
    max_attempts: int = Field(3, ge=1, le=10, validation_alias="PONDER_MAX_ATTEMPTS")
    session_header: str = Field("x-session-id", validation_alias="PONDER_SESSION_HEADER")
    # Chains run for each question and voted on (self-consistency); 1 is off. Capped: each
    # chain costs as much as the first.
    votes: int = Field(1, ge=1, le=MAX_VOTES, validation_alias="PONDER_VOTES")

    # Where models, vLLM's caches and server logs live; the Python that has vLLM installed.
    cache_dir: Path = Field(Path(".cache/ponder"), validation_alias="PONDER_CACHE_DIR")
    vllm_python: str | None = Field(None, validation_alias="PONDER_VLLM_PYTHON")

    # Storage and process
    # An SQLite file (one process), or a `postgresql://user:pass@host:port/db` URL that
    # several processes share (`bot/store/`).
    db: Path | str = Field(Path("data/ponder.db"), validation_alias="PONDER_DB")
    # A shared store: how long a process holds a chain it runs without renewing it (a process
    # killed without a goodbye loses its chains after this), and how often each process looks
    # for chains to resume (those of processes gone) and renews its own.
    lease_seconds: float = Field(30.0, gt=0, validation_alias="PONDER_LEASE_SECONDS")
    recovery_interval: float = Field(10.0, gt=0, validation_alias="PONDER_RECOVERY_INTERVAL")
    shutdown_grace: float = Field(30.0, ge=0, validation_alias="PONDER_SHUTDOWN_GRACE")
    delivery_hours: float = Field(24.0, gt=0, validation_alias="PONDER_DELIVERY_HOURS")
    # Days a finished chain (question, steps, answer, asker id) is kept; 0 keeps everything.
    retention_days: float = Field(90.0, ge=0, validation_alias="PONDER_RETENTION_DAYS")
    model_wait: float = Field(120.0, ge=0, validation_alias="PONDER_MODEL_WAIT")
    health_interval: float = Field(15.0, gt=0, validation_alias="PONDER_HEALTH_INTERVAL")
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias="PONDER_METRICS_PORT")
    # Loopback by default: /metrics tells anyone who can reach it how busy Ponder is.
    metrics_host: str = Field("127.0.0.1", min_length=1, validation_alias="PONDER_METRICS_HOST")
    log_level: str = Field("INFO", validation_alias="PONDER_LOG_LEVEL")

    # Limits
    allowed_users: CommaList = Field((), validation_alias="PONDER_ALLOWED_USERS")
    allowed_channels: CommaList = Field((), validation_alias="PONDER_ALLOWED_CHANNELS")
    allowed_teams: CommaList = Field((), validation_alias="PONDER_ALLOWED_TEAMS")
    user_concurrency: int = Field(2, ge=1, validation_alias="PONDER_USER_CONCURRENCY")
    user_rate_per_minute: int = Field(6, ge=1, validation_alias="PONDER_USER_RATE")
    max_question_chars: int = Field(4000, ge=1, validation_alias="PONDER_MAX_QUESTION_CHARS")

    # Discord
    discord_token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN")
    discord_guild_ids: CommaList = Field((), validation_alias="DISCORD_GUILD_IDS")
    discord_api_url: str = Field("https://discord.com/api/v10", validation_alias="DISCORD_API_URL")
    discord_gateway_url: str = Field(
        "wss://gateway.discord.gg/", validation_alias="DISCORD_GATEWAY_URL"
    )
    # Several processes, one bot: each connects the shards it is given (discord.py's
    # AutoShardedClient); unset, one process runs every shard Discord recommends.
    discord_shard_count: int | None = Field(None, ge=1, validation_alias="DISCORD_SHARD_COUNT")
    discord_shard_ids: CommaList = Field((), validation_alias="DISCORD_SHARD_IDS")

    # Slack
    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_url: str = Field("https://slack.com/api/", validation_alias="SLACK_API_URL")
    # Installs in many workspaces (HTTP mode): Slack's OAuth flow at /slack/install; each
    # workspace's token is kept in Ponder's database. The state secret signs the install
    # links' `state`, so a forged one is refused before the database is asked.
    slack_client_id: str | None = Field(None, validation_alias="SLACK_CLIENT_ID")
    slack_client_secret: SecretStr | None = Field(None, validation_alias="SLACK_CLIENT_SECRET")
    slack_state_secret: SecretStr | None = Field(None, validation_alias="SLACK_STATE_SECRET")
    # The assistant panel's suggested prompts, in place of the built-in three: a JSON list
    # (of strings, or of {"title", "message"}) or texts separated by `|`.
    slack_suggested_prompts: str | None = Field(None, validation_alias="SLACK_SUGGESTED_PROMPTS")

    @property
    def slack_oauth(self) -> bool:
        """Whether Slack runs as an app installed by OAuth in many workspaces."""
        return self.slack_client_id is not None and self.slack_client_secret is not None

    @field_validator("allowed_users", "allowed_channels", "allowed_teams", "discord_guild_ids",
                     "discord_shard_ids", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("discord_guild_ids")
    @classmethod
    def _guild_ids_numeric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item.isdigit():
                raise ValueError(f"guild ids are numbers, got {item!r}")
        return value

    @field_validator("openai_base_url", "discord_api_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "://" == value[-3:]:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/") if not value.endswith("/api/") else value

    @field_validator("openai_api_key")
    @classmethod
    def _one_authorization(cls, value: SecretStr, info: Any) -> SecretStr:
        url = info.data.get("openai_base_url") or ""
        if urlsplit(url).username is not None and value.get_secret_value() != "EMPTY":
            raise ValueError("cannot be used with a user:password in OPENAI_BASE_URL (both go "
                             "in the Authorization header): got both, keep one")
        return value

    # OPENAI_BASE_URL's `user:password@`, taken out of the URL (which is shown and logged) and
    # sent as HTTP basic auth instead (`openai_basic_auth`).
    _openai_basic_auth: tuple[str, SecretStr] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _url_credentials(self) -> Settings:
        parts = urlsplit(self.openai_base_url)
        if parts.username is not None:
            self._openai_basic_auth = (unquote(parts.username),
                                       SecretStr(unquote(parts.password or "")))
            host = parts.netloc.rpartition("@")[2]
            self.openai_base_url = urlunsplit(parts._replace(netloc=host))
        return self

    @property
    def openai_basic_auth(self) -> tuple[str, SecretStr] | None:
        return self._openai_basic_auth

    @field_validator("discord_shard_ids")
    @classmethod
    def _shard_ids(cls, value: tuple[str, ...], info: Any) -> tuple[str, ...]:
        count = info.data.get("discord_shard_count")
        for item in value:
            if not item.isdigit():
                raise ValueError(f"shard ids are numbers, got {item!r}")
            if count is None:
                raise ValueError("needs DISCORD_SHARD_COUNT (the shards of every process)")
            if int(item) >= count:
                raise ValueError(f"shard {item} is not below DISCORD_SHARD_COUNT ({count})")
        return value

    @field_validator("db")
    @classmethod
    def _db_path_or_url(cls, value: Path | str) -> Path | str:
        text = str(value)
        if text.startswith(("postgresql://", "postgres://")):
            return text
        if "://" in text:
            raise ValueError("must be an SQLite file path or a postgresql:// URL, got "
                             f"{text.partition('://')[0]}://…")
        return Path(value)

    @property
    def db_url(self) -> str:
        """PONDER_DB as the store opens it: a path, or a postgresql:// URL."""
        return str(self.db)

    @field_validator("session_header")
    @classmethod
    def _routed_header(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in ROUTER_SESSION_HEADERS:
            raise ValueError("must be a header vllm-router's consistent hashing reads ("
                             f"{', '.join(ROUTER_SESSION_HEADERS)}), got {value!r}")
        return name

    @field_validator("discord_gateway_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"must be a ws(s) URL, got {value!r}")
        return value

    @field_validator("min_steps")
    @classmethod
    def _min_below_max(cls, value: int, info: Any) -> int:
        cap = info.data.get("max_steps")
        return min(value, cap) if cap else value


# Field name -> documented environment name, for error messages.
_ENV_NAMES = {
    name: (field.validation_alias if isinstance(field.validation_alias, str) else name.upper())
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning a validation error into one line that names the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        env = _ENV_NAMES.get(field, field)
        message = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        if "got " in message:
            shown = ""
        raise SettingsError(f"setting {env}: {message}{shown}") from None
