"""The configuration: records (:mod:`.records`), loading and validation (:mod:`.load`,
with the checks it shares with the web configuration in :mod:`.checks`), the bounded
reading of files and YAML (:mod:`.files`, :mod:`.yamldoc`), and :class:`Secret`.

This package imports nothing else of the exporter's; everything else reads its records.
What other modules use is named here.
"""

from exporter.config.checks import ConfigError
from exporter.config.files import (
    MAX_CONFIG_FILE_BYTES,
    MAX_KEY_FILE_BYTES,
    MAX_TOKEN_FILE_BYTES,
    UnreadableFile,
    read_file,
    read_token_file,
)
from exporter.config.load import (
    MAX_LIVESTREAM_ID_LENGTH,
    TOKEN_ENV,
    load,
    loads,
    parse_duration,
    parse_listen_address,
    parse_rate_limit,
    read_text,
)
from exporter.config.records import (
    DEFAULT_ANALYTICS_INTERVAL,
    DEFAULT_BASE_URL,
    DEFAULT_CREDENTIALS,
    DEFAULT_KEY_URL,
    DEFAULT_MAX_LIVESTREAMS,
    DEFAULT_WEBHOOK_PATH,
    DEFAULT_WEBHOOK_PORT,
    ApiConfig,
    AppConfig,
    Config,
    Credentials,
    Limits,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Shard,
    WebhooksConfig,
    format_duration,
    rate_key,
)
from exporter.config.secret import Secret
from exporter.config.yamldoc import MAX_YAML_NODES, YamlError, parse_yaml

__all__ = [
    "DEFAULT_ANALYTICS_INTERVAL",
    "DEFAULT_BASE_URL",
    "DEFAULT_CREDENTIALS",
    "DEFAULT_KEY_URL",
    "DEFAULT_MAX_LIVESTREAMS",
    "DEFAULT_WEBHOOK_PATH",
    "DEFAULT_WEBHOOK_PORT",
    "MAX_CONFIG_FILE_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MAX_LIVESTREAM_ID_LENGTH",
    "MAX_TOKEN_FILE_BYTES",
    "MAX_YAML_NODES",
    "TOKEN_ENV",
    "ApiConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "Limits",
    "LivestreamConfig",
    "PollConfig",
    "RateLimit",
    "Secret",
    "Shard",
    "UnreadableFile",
    "WebhooksConfig",
    "YamlError",
    "format_duration",
    "load",
    "loads",
    "parse_duration",
    "parse_listen_address",
    "parse_rate_limit",
    "parse_yaml",
    "rate_key",
    "read_file",
    "read_text",
    "read_token_file",
]
