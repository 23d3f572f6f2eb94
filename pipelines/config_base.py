"""Building blocks of the typed config: strict sections, described fields, sampling parameters.

Separate from config.py so method-specific sections (method_config.py) can use them and be mounted
into the top-level Config without an import cycle.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config problem, with the file and key it concerns."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def F(default, description: str, **kw):
    return Field(default, description=description, **kw)


class SamplingConfig(Section):
    temperature: float = F(0.7, "Sampling temperature.", ge=0)
    top_p: float = F(0.95, "Nucleus sampling mass.", gt=0, le=1)
    max_tokens: int = F(256, "Maximum new tokens per completion.", ge=1)
    n: int = F(1, "Samples per prompt.", ge=1)
    stop: list[str] = F([], "Stop strings.")
    presence_penalty: float = F(0.0, "Presence penalty.")
    frequency_penalty: float = F(0.0, "Frequency penalty.")
