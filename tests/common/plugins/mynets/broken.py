raise RuntimeError("this plug-in module fails at import")
