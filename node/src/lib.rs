//! taskbroker node (under construction).
