"""Models: specs, loading, the pair (sides, shared backbone, adapters, locks), the embedded model."""
