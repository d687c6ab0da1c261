"""Typed reads of one JSON object of a model's configuration; every error names the file and key."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A model folder's configuration is missing, unreadable or inconsistent."""


POSITIVE, SIZES = "positive integer", "list of positive integers"  # _Reader kinds beyond Python types


class _Reader:
    """Reads keys from one JSON object and names the file and path in every error."""

    def __init__(self, data: dict, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        self.data, self.where = data, where

    def req(self, key: str, kind=None):
        if key not in self.data or self.data[key] is None:
            raise ConfigError(f"{self.where}: required field '{key}' is missing")
        return self._check(key, self.data[key], kind)

    def opt(self, key: str, default, kind=None):
        value = self.data.get(key)
        return default if value is None else self._check(key, value, kind)

    def sub(self, key: str, required=True) -> "_Reader | None":
        if self.data.get(key) is None:
            if required:
                raise ConfigError(f"{self.where}: required section '{key}' is missing")
            return None
        return _Reader(self.data[key], f"{self.where}:{key}")

    def _check(self, key, value, kind):
        if kind in (int, POSITIVE) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{self.where}: field '{key}' must be an integer, got {value!r:.60}")
        if kind is POSITIVE:
            if not 0 < value < 2 ** 31:
                raise ConfigError(f"{self.where}: field '{key}' must be a positive integer below 2^31, got {value}")
            return value
        if kind is SIZES:
            if not (isinstance(value, list) and value and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31 for v in value)):
                raise ConfigError(f"{self.where}: field '{key}' must be a list of positive integers, "
                                  f"got {value!r:.60}")
            return tuple(value)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{self.where}: field '{key}' must be true or false, got {value!r:.60}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{self.where}: field '{key}' must be a string, got {value!r:.60}")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{self.where}: field '{key}' must be a number, got {value!r}")
            try:
                number = float(value)
            except OverflowError:
                number = float("inf")
            if not math.isfinite(number):
                raise ConfigError(f"{self.where}: field '{key}' must be a finite number, got {value!r:.60}")
            return number
        if kind is list and not isinstance(value, list):
            raise ConfigError(f"{self.where}: field '{key}' must be a list, got {value!r}")
        if kind is dict and not isinstance(value, dict):
            raise ConfigError(f"{self.where}: field '{key}' must be an object, got {value!r}")
        return value
