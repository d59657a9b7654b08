"""The labelling page: its file rules (``files``), its state (``store``), the trainings it starts
(``trainer``), and the app with its page (``page``, ``static/label.html``)."""
