//! [`NameMap`]: the map keyed by statement or portal names (or statement texts) that the
//! session state's maps use.

use std::collections::HashMap;

/// A map keyed by statement or portal names (or statement texts), looked up on every `Parse`,
/// `Bind` and `Execute`: hashed with foldhash (fast on short keys, seeded per process) rather
/// than SipHash.
pub(super) type NameMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;
