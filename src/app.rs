//! Wiring: shared application state and the server life cycle.
