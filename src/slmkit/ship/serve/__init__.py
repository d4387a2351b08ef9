"""`slm serve`: an OpenAI-compatible HTTP server and a web chat page (the `serve` extra: fastapi, uvicorn).

`engine.py` owns the model and the generation queue; `app.py` is the FastAPI app (`create_app`, `serve`);
`static/index.html` is the chat page. Import `slmkit.ship.serve.app` only when serving: it imports fastapi.
"""
