"""The version of apportion (``apportion.__version__``), in a module of its own.

Kept out of ``apportion/__init__.py`` so that modules inside the package (the
OpenTelemetry sink names its tracer with it) need not import the package's curated API,
which imports them.
"""

__version__ = "0.1.0"
