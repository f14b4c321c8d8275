"""The one settings object: what the environment says, read once per process.

Every layer reads its environment through :func:`settings` (the library, storage, the flows, the dashboard
and the commands), so a variable has one name, one parser and one default everywhere:

=========================  ====================  ==========================================================
variable                   field                 meaning (default)
=========================  ====================  ==========================================================
``NER_DB``                 ``db``                the DuckDB file the commands, flows and dashboard use
                                                 (``ner.duckdb``)
``NER_CACHE_DIR``          ``cache_dir``         one cache root: the compiled CRF kernels and, under
                                                 ``converted/``, converted TF checkpoints
                                                 (``$XDG_CACHE_HOME/zh-ner``, else ``~/.cache/zh-ner``)
``HF_HUB_OFFLINE``         ``offline``           a hub id is looked up in the local Hugging Face cache
                                                 only (off; the commands switch it on)
``NER_NO_PREFECT``         ``no_prefect``        the commands run their steps without Prefect (off)
``NER_DEBUG``              ``debug``             a failing command shows its traceback (off)
``NER_CRF_KERNEL``         ``crf_kernel``        use the compiled C CRF kernels when a compiler is there
                                                 (on)
``NER_API_KEY``            ``api_key``           the key ``ner serve`` asks clients for (none; see
                                                 ``--api-key-file``)
``NER_ALLOWED_HOSTS``      ``allowed_hosts``     more names ``ner serve`` answers for in ``Host``,
                                                 comma-separated (none: its bind address; see
                                                 ``--allowed-hosts``)
``NER_QUERY_TIME_LIMIT_S`` ``query_time_limit_s`` seconds one guarded SQL query may run (10)
``NER_SERVE_URL``          ``serve_url``         the service ``ner query`` asks (``http://127.0.0.1:8000``)
``NER_DASK_ADDRESS``       ``dask_address``      the Dask scheduler of the sharded prediction deployment
                                                 (none: a local cluster)
``NER_DASK_WORKERS``       ``dask_workers``      workers of that local cluster (2)
``NER_PRECISION_AUTO``     ``precision_auto``    what ``--precision auto`` takes as fastest: ``fp32``,
                                                 ``bf16``, ``fp16`` or ``int8``, nothing timed (none:
                                                 timed once per machine, see
                                                 :mod:`ner_core.runtime.calibrate`)
=========================  ====================  ==========================================================

A switch is off when its variable is unset, empty, ``0``, ``false``, ``no`` or ``off`` (any case), and on
for any other value. A value that cannot be read (``NER_DASK_WORKERS=many``) is refused in one line naming
the variable.

"Read once": :func:`settings` parses the environment at its first call and returns the same object after
that; it parses again only when this process has changed one of these variables since (a test's
``monkeypatch.setenv``, a command that sets ``NER_DB`` for what it starts), so no reader ever sees a stale
value and none parses twice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

__all__ = ["DEFAULT_DB", "DEFAULT_SERVE_URL", "ENV", "Settings", "is_on", "settings"]

DEFAULT_DB = "ner.duckdb"
DEFAULT_SERVE_URL = "http://127.0.0.1:8000"
_OFF = ("", "0", "false", "no", "off")

#: field -> the environment variable it is read from
ENV: dict[str, str] = {
    "db": "NER_DB",
    "cache_dir": "NER_CACHE_DIR",
    "offline": "HF_HUB_OFFLINE",
    "no_prefect": "NER_NO_PREFECT",
    "debug": "NER_DEBUG",
    "crf_kernel": "NER_CRF_KERNEL",
    "api_key": "NER_API_KEY",
    "allowed_hosts": "NER_ALLOWED_HOSTS",
    "query_time_limit_s": "NER_QUERY_TIME_LIMIT_S",
    "serve_url": "NER_SERVE_URL",
    "dask_address": "NER_DASK_ADDRESS",
    "dask_workers": "NER_DASK_WORKERS",
    "precision_auto": "NER_PRECISION_AUTO",
}


#: what a variable must hold, for the one-line refusal of a value that cannot be read
_EXPECTED = {
    "query_time_limit_s": "expected a number of seconds > 0",
    "dask_workers": "expected a positive number of workers",
    "db": "expected a database file name",
    "precision_auto": "expected fp32, bf16, fp16 or int8",
}


def is_on(value: str | None) -> bool:
    """The one reading of a switch variable: off when unset, empty, 0, false, no or off; on otherwise."""
    return value is not None and value.strip().lower() not in _OFF


def _default_cache_dir(environ: Mapping[str, str]) -> Path:
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "zh-ner"


class Settings(BaseModel):
    """What the environment configures (see the module's table); build it with :meth:`from_env`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str = Field(DEFAULT_DB, min_length=1)
    cache_dir: Path = Field(default_factory=lambda: _default_cache_dir(os.environ))
    offline: bool = False
    no_prefect: bool = False
    debug: bool = False
    crf_kernel: bool = True
    api_key: SecretStr | None = None
    allowed_hosts: tuple[str, ...] = ()
    query_time_limit_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    serve_url: str = DEFAULT_SERVE_URL
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    precision_auto: Literal["fp32", "bf16", "fp16", "int8"] | None = None

    @field_validator("offline", "no_prefect", "debug", "crf_kernel", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        return is_on(v) if isinstance(v, str) else v

    @field_validator("precision_auto", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return tuple(n.strip() for n in v.split(",") if n.strip()) if isinstance(v, str) else v

    @property
    def converted_dir(self) -> Path:
        """Where converted TensorFlow checkpoints are cached."""
        return self.cache_dir / "converted"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the variables of :data:`ENV` from ``environ`` (default ``os.environ``); unset or empty ones
        keep their defaults (a switch reads empty as off)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"cache_dir": _default_cache_dir(env)}
        for name, var in ENV.items():
            raw = env.get(var)
            if raw is None or (
                raw.strip() == "" and name not in ("offline", "no_prefect", "debug", "api_key")
            ):
                continue
            values[name] = raw.strip() if name != "api_key" else raw
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err.get("loc") else "?"
            want = _EXPECTED.get(field, err["msg"].lower())
            shown = "(hidden)" if field == "api_key" else repr(values.get(field))
            raise ValueError(f"{ENV.get(field, field)}: {want}, got {shown}") from None


_VARIABLES = (*ENV.values(), "XDG_CACHE_HOME")


def _snapshot() -> tuple[str | None, ...]:
    return tuple(os.environ.get(var) for var in _VARIABLES)


@functools.lru_cache(maxsize=4)
def _parsed(snapshot: tuple[str | None, ...]) -> Settings:
    return Settings.from_env({k: v for k, v in zip(_VARIABLES, snapshot, strict=True) if v is not None})


def settings() -> Settings:
    """The process's settings (see the module's doc): parsed from the environment once, and again only
    after one of its variables changed."""
    return _parsed(_snapshot())
