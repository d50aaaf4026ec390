"""The prompt files, shipped as package data (installed as ``cropper.prompt_files``)."""
