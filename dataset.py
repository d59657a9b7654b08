"""The data side, for scripts that import ``dataset`` from a checkout: file-name labels, the label
codec, the one preprocessing path, folders and datasets. The code lives in ``captcha_recognize/data/``.

    from dataset import parse_label, read_labelled, Preprocess, image_to_array
"""
from captcha_recognize.data.arrays import ArrayDataset, normalize, preprocess, to_arrays  # noqa: F401
from captcha_recognize.data.codec import LabelConverter  # noqa: F401
from captcha_recognize.data.folders import LabelledImages, list_images, read_labelled, split_indices  # noqa: F401
from captcha_recognize.data.images import open_image  # noqa: F401
from captcha_recognize.data.labels import LabelRules, infer_alphabet, parse_label  # noqa: F401
from captcha_recognize.data.preprocess import Preprocess, image_to_array  # noqa: F401
from captcha_recognize.errors import DataError  # noqa: F401
