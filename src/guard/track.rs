//! Tracked versions: the version of each guarded row one session has seen, bounded.
//!
//! A [`Tracker`] maps (guard index, key values) to the canonical version text last seen for
//! that row on this session. It holds at most `limit` rows and drops the least recently used
//! one first; a dropped row reads as "nothing known", never as a wrong version. Keys are
//! encoded into one string (guard index and length-prefixed parts, so no two different keys
//! share an encoding whatever the key text contains); lookups reuse a scratch buffer and do not
//! allocate.
//!
//! Every change is journaled ([`journal`]) until the engine says where the transaction it was
//! made in ended: [`Tracker::commit`] keeps it, [`Tracker::rollback`] and
//! [`Tracker::rollback_to`] undo it back to what the session knew before the transaction or
//! the savepoint ([`Tracker::savepoint`]).

mod journal;
mod tracker;
mod undo;

pub use tracker::Tracker;
