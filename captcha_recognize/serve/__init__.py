"""The recognition service: its settings (``config``), typed API (``schemas``), the served models
(``registry``), micro-batching (``batcher``), requests (``requests``), metrics (``metrics``), the
ASGI front (``front``) and the app (``app``); ``process`` runs a server in a child process."""
