"""The demo chat: rooms over the channel layer's groups, served by any of the kit's roles."""
