"""The served ASGI app (``api.main:app``), built from the environment at import time.

Run it through ``python -m api`` (validates first, then execs gunicorn).
"""

from api.app import create_app

app = create_app()
