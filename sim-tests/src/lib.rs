//! taskbroker sim-tests (under construction).
