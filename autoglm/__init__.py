"""The ``autoglm`` command: the one module that knows every component (``autoglm.cli``)."""
