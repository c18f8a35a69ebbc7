"""The package version, in a module of its own so that any module can import it cheaply."""

__version__ = "0.6.4"
