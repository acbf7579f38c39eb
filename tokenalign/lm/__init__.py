"""The frozen LM: loading (bundled, local HF, GGUF), and the one prompt encoding every part shares."""
