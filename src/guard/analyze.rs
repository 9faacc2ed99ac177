//! analyze (to be written).
