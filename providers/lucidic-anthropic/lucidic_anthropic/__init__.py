"""Lucidic provider plugin for the Anthropic Python library.

Installed, it registers ``anthropic`` in the ``lucidic.providers`` entry-point
group; ``lai.init(providers=["anthropic"])`` turns it on.
"""

from __future__ import annotations

from ._adapter import AnthropicAdapter

__all__ = ["AnthropicAdapter"]
__version__ = "0.1.0"
