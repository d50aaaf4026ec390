"""Views of a crop: overlays, the notebook display, debug folders."""
