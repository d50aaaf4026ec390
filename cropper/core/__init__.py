"""The core types every part stands on: boxes, photos, files, errors, requests."""
