"""Reading captchas with a trained model: what a model needs besides its weights (``spec``), the
checkpoint format (``checkpoint``) and ONNX files (``onnx_file``, ``export``), the recognizer and the
one inference loop (``recognizer``), scores (``scores``), calibrated confidence and the accept
threshold (``calibration``), and the reports of a prediction run (``report``)."""
