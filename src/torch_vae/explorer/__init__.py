"""The live explorer (``torch-vae explore``): what it serves, without the web (state.py), and
the FastAPI app with its JSON API (app.py) over the page in static/."""
