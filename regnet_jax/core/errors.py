"""The errors a user can fix: every one derives from ``UserError``, so a command reports any of them the same way.

The shared runner (``regnet_jax.core.cli.run``) prints ``error: <message>`` on one line and exits with status 2 for
any ``UserError``; anything else is a bug or a failure and keeps its traceback. Each package defines its own
subclasses where it raises them (``ConfigError`` here, because every package raises it):

    UserError
    ├── ConfigError          a config value, file or command-line argument (regnet_jax.config re-exports it)
    │   ├── StorageError, CheckpointError, DatasetNotReadyError, BadImagesError, WorkdirBusyError,
    │   └── SweepError, TooFewModelsError
    ├── WeightsError, FormatError (SafetensorsError), ConversionError, ExportError   (regnet_jax.weights)
    └── PredictError                                                                  (regnet_jax.training.prediction)
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix (a config, a file, an argument); the message names it and the fix."""


class ConfigError(UserError):
    """A config value is missing, unknown or out of range; the message names the field and the fix."""
