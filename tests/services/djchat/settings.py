"""Django settings of the Channels chat: CHANNEL_LAYERS comes from the kit's layer config file."""

from __future__ import annotations

from layer.config import load

SECRET_KEY = "django-chat-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "tests.services.djchat.urls"
USE_TZ = True
# The same YAML the services read (LAYER_CONFIG), in Django's own CHANNEL_LAYERS shape.
CHANNEL_LAYERS = {
    alias: {"BACKEND": spec.backend, "CONFIG": spec.config} for alias, spec in load().items()
}
