"""Exceptions raised by every backend.

``ChannelFull`` subclasses Django Channels' own exception when Channels is installed, so code
written against Channels (``except channels.exceptions.ChannelFull``) catches ours unchanged.
"""

from __future__ import annotations

try:  # pragma: no cover - exercised by whichever environment the tests run in
    from channels.exceptions import ChannelFull as _ChannelsChannelFull
except ImportError:  # pragma: no cover
    _ChannelsChannelFull = Exception

__all__ = [
    "AccessRefused",
    "ChannelFull",
    "ConfigError",
    "InvalidChannelLayerError",
    "InvalidName",
    "InvalidOption",
    "LayerClosed",
    "MessageTooLarge",
    "NotOwnChannel",
]


class ChannelFull(_ChannelsChannelFull):  # type: ignore[misc]
    """The channel (or the backend's storage) is at capacity; ``send`` never blocks instead."""


class MessageTooLarge(ValueError):
    """The encoded message is larger than the layer's ``max_message_size``."""


class InvalidName(TypeError):
    """A channel or group name breaks the naming rules (a ``TypeError``, as Channels raises)."""


class NotOwnChannel(AssertionError):
    """A receive on a process-specific channel (``name!...``) that another client's
    ``new_channel`` made: only that client may receive there (anyone else would hang, or take
    its messages). An ``AssertionError``, as channels_redis raises, so code written for it
    catches ours."""


class InvalidOption(ValueError):
    """A constructor option has the wrong type or an impossible value."""


class ConfigError(ValueError):
    """A layer configuration file is unreadable or wrong; the message names file, key and fix."""


class InvalidChannelLayerError(ConfigError):
    """The configured alias or backend does not exist (Channels' name for this failure)."""


class AccessRefused(ConnectionError):
    """The layer's storage answered but refused this client (a wrong password, an ACL user
    without a permission it needs): a configuration error, which retrying does not fix."""


class LayerClosed(RuntimeError):
    """A call on a layer after its ``close()`` that cannot reopen by itself (an IPC layer's
    segment is detached for good; a Redis layer reconnects instead)."""

    def __init__(self, message: str = "this channel layer is closed; make a new one") -> None:
        super().__init__(message)
