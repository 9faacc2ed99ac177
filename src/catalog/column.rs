//! One user column of a table, as the catalog describes it.

/// One user column of a table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub attnum: i16,
    /// `format_type` of the column, e.g. `timestamp(6) without time zone`.
    pub type_name: String,
    /// The type OID, domains replaced by their base type.
    pub base_type: u32,
    /// The type modifier (a timestamp's precision), -1 when none.
    pub typmod: i32,
    pub not_null: bool,
    pub has_default: bool,
    /// The default as SQL (`pg_get_expr`).
    pub default: Option<String>,
    /// The default is a `nextval` of a sequence.
    pub default_sequence: bool,
    /// `attgenerated` / `attidentity` (empty when not).
    pub generated: String,
    pub identity: String,
}
