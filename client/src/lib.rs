//! taskbroker client (under construction).
