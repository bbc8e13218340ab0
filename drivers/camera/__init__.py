"""Camera daemon: one camera, face quality on every frame, auto-capture."""
