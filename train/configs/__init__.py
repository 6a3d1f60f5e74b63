"""Training recipes: ml_collections ``get_config()`` files (see ``base.py`` for every key)."""
