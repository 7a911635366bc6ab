//! Validation errors that point at a field, so the config loader can report them as
//! `FILE:LINE:COL: message` (it owns the spans; validators stay pure and span-free).

/// One validation error of a config table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending key *within the table being validated*, e.g.
    /// `"address"` or `"status.fault_bit"`; empty for the table as a whole.
    pub field: String,
    /// Lowercase message that says what is wrong and, where it helps, what to do.
    pub message: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}
