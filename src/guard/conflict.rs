//! conflict (to be written).
