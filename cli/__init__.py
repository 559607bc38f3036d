"""The ``sglr`` command line (installed as ``sglr_keras.cli``)."""
