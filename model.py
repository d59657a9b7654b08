"""The networks and their config, nanoGPT-style: ``build_model(ModelConfig(**ckpt["model_args"]))``
rebuilds a checkpoint's model. The code lives in ``captcha_recognize/model.py``; this name stays for
scripts that import ``model`` from a checkout."""
from captcha_recognize.model import CNNModel, CRNN, ModelConfig, build_model  # noqa: F401
