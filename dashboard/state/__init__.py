"""What every page shares, one module per concern: `pair` (the loaded model pair, cached across sessions, and work
on it), `demo` (building the demo experiment and its status panel), `sidebar` (the sidebar every page draws),
`inputs` (widget values kept across pages) and `keys` (the session-state keys more than one module uses)."""
