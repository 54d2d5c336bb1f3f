"""``lhp serve``: an OpenAI-compatible HTTP server for platform checkpoints.

``engine`` loads the model and runs requests one at a time from a bounded queue, ``schemas``
holds the request bodies (strict: unknown or wrongly typed fields are refused), ``app`` the
FastAPI routes, the Prometheus metrics and the chat page (``static/chat.html``).
"""
