//! taskbroker storage (under construction).
