"""Built-in models and data used by `edgeship demo` and by the tests."""
