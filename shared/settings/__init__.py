"""Settings of the edge daemon and the cloud service, and the loader that fills them.

Load them with `load_settings(EdgeSettings, config_file=..., overrides=...)`; see
docs/configuration.md for the source order and every field.
"""

from shared.dotted import deep_merge
from shared.settings.base import (
    ComponentSettings,
    Section,
    SettingsError,
    load_settings,
    validation_problems,
)
from shared.settings.cloud import CloudSettings, EngineSettings, ServerTLSSettings
from shared.settings.edge import (
    CacheSettings,
    ClientTLSSettings,
    CloudCallSettings,
    EdgeCloudSettings,
    EdgeSettings,
    FallbackSettings,
    MqttSettings,
    OnnxSettings,
    RoutingSettings,
    RuntimeSettings,
    TelemetrySettings,
)

__all__ = [
    "CacheSettings",
    "ClientTLSSettings",
    "CloudCallSettings",
    "CloudSettings",
    "ComponentSettings",
    "EdgeCloudSettings",
    "EdgeSettings",
    "EngineSettings",
    "FallbackSettings",
    "MqttSettings",
    "OnnxSettings",
    "RoutingSettings",
    "RuntimeSettings",
    "Section",
    "ServerTLSSettings",
    "SettingsError",
    "TelemetrySettings",
    "deep_merge",
    "load_settings",
    "validation_problems",
]
