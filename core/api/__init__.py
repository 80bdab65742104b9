"""The public API's objects: clusters, envs, services (functions, classes, instances), call handles, and
loading saved ones by name (``loading`` is the only place the API reads or writes the registry)."""
