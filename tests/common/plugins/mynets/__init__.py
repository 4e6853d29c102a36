"""A plug-in model package for the tests: ``mynets.nets:build`` and broken ones."""
