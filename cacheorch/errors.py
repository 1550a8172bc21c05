"""One error hierarchy; the CLI maps it to exit codes (2 = bad input, 1 = the job failed)."""
from __future__ import annotations

__all__ = [
    "CacheorchError", "UsageError", "ConfigError", "PluginError", "UnknownPluginError",
    "PluginConflictError", "ServiceError", "NotCachedError", "AuthError", "SchemeError",
    "LevelError", "PolicyError", "AreaError", "CatalogError", "CatalogTooNewError",
    "ExportError", "OutputExistsError", "FormatError", "JobFailedError", "MapError",
]


class CacheorchError(Exception):
    """Base of every error cacheorch expects; its message is one line meant for a person.

    ``exit_code`` follows the command-line contract: 2 for bad input or usage, 1 for a job
    that ended failed or partial.
    """

    exit_code: int = 2


class UsageError(CacheorchError):
    """A command was called with arguments that do not fit together."""


class ConfigError(CacheorchError):
    """cacheorch.ini or a flag is wrong; the message names the file, section and key."""


class PluginError(CacheorchError):
    """A plugin could not be loaded, validated or constructed."""


class UnknownPluginError(PluginError):
    """A plugin name that no registered plugin provides; the message lists the known names."""


class PluginConflictError(PluginError):
    """Two plugins claim the same name within one kind."""


class ServiceError(CacheorchError):
    """The service could not be reached or answered something that is not a service."""


class NotCachedError(ServiceError):
    """The service exists but has no tiling scheme (``tileInfo``): it is not a cached map service."""


class AuthError(ServiceError):
    """The service refused the credentials (ArcGIS 498 invalid token, 499 token required, 403)."""


class SchemeError(CacheorchError):
    """A tiling scheme is malformed or inconsistent."""


class LevelError(SchemeError):
    """A level or scale that the tiling scheme does not have."""


class PolicyError(CacheorchError):
    """A level-selection policy was given options it cannot apply."""


class AreaError(CacheorchError):
    """An area of interest could not be read, projected, or does not meet the grid."""


class CatalogError(CacheorchError):
    """The SQLite catalog could not be opened, migrated or queried."""


class CatalogTooNewError(CatalogError):
    """The catalog was migrated by a newer cacheorch than this one."""


class ExportError(CacheorchError):
    """An exporter could not write its output."""


class OutputExistsError(ExportError):
    """The output already exists and the job was not told to replace it."""

    @classmethod
    def at(cls, output: object) -> OutputExistsError:
        """The one message, naming the two ways on."""
        return cls(f"{output} already exists; choose another output, or replace it with "
                   "--mode overwrite, or add to it with --mode merge")


class FormatError(CacheorchError):
    """A cache file (bundle, conf.xml, root.json, package) is malformed."""


class JobFailedError(CacheorchError):
    """The job ended failed or partial; the catalog records which tiles."""

    exit_code = 1


class MapError(CacheorchError):
    """A map (web map, portal item, .mapx, QGIS project...) cannot be read or has nothing to export."""
