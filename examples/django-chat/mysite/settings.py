"""Settings of the chat: Django's defaults for a small project, plus three things for Channels.

1. ``channels`` in INSTALLED_APPS and ``ASGI_APPLICATION`` (``manage.py runworker`` uses them);
2. ``CHANNEL_LAYERS``: the one place the layer is named (``layerkit`` reads it from here);
3. WhiteNoise serves the static files (the admin's and the chat's) from the app itself.

Everything that differs between a laptop and a cluster comes from the environment.
"""

import os
from pathlib import Path

from layer.config import load

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-change-me-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "mysite.asgi.application"

# The channel layer. The kit's deployments (its docker-compose.yml, its k8s overlays) set
# LAYER_CONFIG to their topology's layer config (in-memory, IPC, sharded Redis, Local + Redis);
# without it this is the in-memory layer, for one process (`layerkit combined`). A project that
# runs on one backend only may as well write it out:
#   CHANNEL_LAYERS = {"default": {"BACKEND": "layer.redis.RedisChannelLayer",
#                                 "CONFIG": {"hosts": [os.environ["REDIS_URL"]]}}}
CHANNEL_LAYERS = {
    alias: {"BACKEND": spec.backend, "CONFIG": spec.config}
    for alias, spec in load(os.environ.get("LAYER_CONFIG") or "inmemory").items()
}

# The chat keeps nothing in the database; the admin does (users, sessions). SQLite is for one
# machine: in containers, point this at a database every worker shares.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHAT_DATABASE", BASE_DIR / "db.sqlite3"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# `manage.py collectstatic` gathers the files into STATIC_ROOT (the Dockerfile does it at build
# time); WhiteNoise serves them, compressed and with far-future caching. (Under ASGI, Django warns
# once per process that a WhiteNoise response streams a synchronous iterator: harmless.)
STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
