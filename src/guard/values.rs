//! values (to be written).
