"""Core: what every layer may use — the registry, the cache directory, the typed-config parser, running moments."""
