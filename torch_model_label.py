"""The labelling page: the model proposes each captcha's text, you confirm it with one key.

Usage:
    python torch_model_label.py raw_captchas --out labelled                  # random order, no model
    python torch_model_label.py raw_captchas --out labelled --checkpoint m.pth   # least confident first
    python torch_model_label.py --review labelled --folds 5                  # fix misnamed images

Opens a local page on http://127.0.0.1:PORT/. Enter accepts the pre-filled reading, typing
replaces it, Tab/Esc skips, Ctrl+U marks the image unreadable, Ctrl+Z undoes. Each label copies
the image into ``--out`` as ``<label>.png`` (``<label>_2.png`` when the text repeats; the source
is kept); the state is ``<out>.sqlite`` and the page's trainings go to ``<out>.models/``, so a
restart resumes. ``--review DIR`` cross-reads DIR first (``--folds`` trainings, as in
check_labels.py; stored for restarts, ``--reread`` reads again) and walks the images read differently
from their names, the most confident first; Enter renames the file to the text, Tab/Esc keeps its name.
"""
import sys

from captcha_recognize.cli.launch import label

if __name__ == "__main__":
    sys.exit(label())
