//! taskbroker raft (under construction).
