//! The prefilter: a cheap scan that tells which texts may touch a guarded table.

use crate::config::Guard;

#[derive(Debug)]
pub struct Prefilter {}

impl Prefilter {
    pub fn new(_guards: &[Guard]) -> Prefilter {
        Prefilter {}
    }
}
