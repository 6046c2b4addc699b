"""The chat project's settings, less CHANNEL_LAYERS: each ``settings*`` module adds its own."""

from __future__ import annotations

SECRET_KEY = "django-chat-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "tests.services.djchat.urls"
USE_TZ = True
