//! track (to be written).
