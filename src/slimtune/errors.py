"""Errors slimtune raises for bad input: each names what is wrong and how to fix it."""


class SlimtuneError(Exception):
    """Base class: the CLI prints these as one line, without a stack trace."""


class ConfigError(SlimtuneError, ValueError):
    """An option or config value is invalid."""


class ModelLoadError(SlimtuneError):
    """A model could not be found, read or used."""


class DataError(SlimtuneError, ValueError):
    """A data file or dataset is missing, malformed or too small."""


class ArtifactError(SlimtuneError):
    """An artifact directory is missing, incomplete or of the wrong kind."""


class TrainingError(SlimtuneError):
    """Training cannot go on (e.g. its loss became non-finite)."""


class NonFiniteError(SlimtuneError, ValueError):
    """A model produced non-finite values (nan or inf) where a score needs finite ones."""
