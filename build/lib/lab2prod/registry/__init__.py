"""The model registry (immutable versions, the champion pointer records, rollback), the gate between champion
and challenger, and one promotion decision."""
