"""mlgate prediction API (FastAPI, served by gunicorn with uvicorn workers)."""
