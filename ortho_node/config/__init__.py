"""Node settings: the sections and their rules (``schema``), where values come from (``loading``), and the
console users' entry format (``users``). The names below are the package's interface."""

from ortho_node.config.loading import (CONFIG_ENV, DESTINATIONS_ENV, ENV_PREFIX, describe, load_destinations,
                                       load_settings)
from ortho_node.config.schema import AcceptRule, AcceptSettings
from ortho_node.config.schema import (BUNDLED_MODEL, OBJECT_KINDS, ROLES, SECTIONS, AssemblySettings, ClusterSettings,
                                      ConfigError, ConsoleSettings, DatabaseSettings, DeliverySettings, DestinationSettings,
                                      DicomSettings, DicomwebSettings, LoggingSettings, MetricsSettings, ModelSettings,
                                      ResultsSettings, SchedulingSettings, Settings, StorageSettings, TlsSettings,
                                      parse_dicom_address)

__all__ = [
    "AcceptRule", "AcceptSettings",
    "BUNDLED_MODEL", "ClusterSettings", "ROLES", "CONFIG_ENV", "DESTINATIONS_ENV", "ENV_PREFIX", "OBJECT_KINDS", "SECTIONS",
    "AssemblySettings", "ConfigError", "ConsoleSettings", "DatabaseSettings", "DeliverySettings",
    "DestinationSettings", "DicomSettings", "DicomwebSettings", "LoggingSettings", "MetricsSettings", "ModelSettings",
    "ResultsSettings", "SchedulingSettings", "Settings", "StorageSettings", "TlsSettings", "describe",
    "load_destinations", "load_settings", "parse_dicom_address",
]
