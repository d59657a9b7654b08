"""Data: file-name labels (``labels``), the label codec (``codec``), decoding images of any kind
(``images``), the one preprocessing path (``preprocess``), folders of captchas (``folders``),
tensors of preprocessed images (``arrays``), training-time augmentation (``augment``) and the
project's generated captchas (``synthetic``)."""
