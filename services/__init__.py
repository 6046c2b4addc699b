"""Protocol servers and workers that carry ASGI over a channel layer (``layerkit``)."""
