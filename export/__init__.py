"""Export to TF Serving (installed as ``sglr_keras.export``)."""
