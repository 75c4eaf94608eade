"""From a chosen policy to a shipped model: replay a stored study's setup, recover the policy
(``replay``), confirm the best trials with a longer recovery (``confirm``), apply and export it
(``apply``), and check and quantize the ONNX file (``onnx``)."""
