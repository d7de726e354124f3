"""Lucidic provider plugin for the OpenAI Python library.

Installed, it registers ``openai`` in the ``lucidic.providers`` entry-point
group; ``lai.init(providers=["openai"])`` turns it on.
"""

from __future__ import annotations

from ._adapter import OpenAIAdapter

__all__ = ["OpenAIAdapter"]
__version__ = "0.1.0"
