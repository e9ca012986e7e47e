"""edgederm demo app: offline phone-camera screening with an exported model (Kivy).

The pure modules (capture, contours, presentation, history, benchmark, sources, settings_store)
need only numpy, Pillow and ``edgederm.runtime``; the Kivy layer lives in ``demo_app.ui``.
"""
