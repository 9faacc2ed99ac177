//! Rendering a guarded write: the original text with the version predicate, the bump and the
//! proxy's `RETURNING` columns spliced in at token positions found by [`super::analyze`].

/// Where the rewrite splices into the statement text (byte offsets into the analysed text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splice {}
