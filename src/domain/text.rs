//! Rules for free text that every layer stores: names and what no store can hold.

use crate::error::{Error, Result};

/// Longest room name or display name, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Checks a room name or display name.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Refuses a NUL character. PostgreSQL cannot store one in a text column (SQLite
/// can), so the rule is made here, once, for both stores: a NUL is bad input.
pub fn check_no_nul(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(field, "must not contain a NUL character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(check_name("name", &"é".repeat(256)).is_ok());
        assert!(check_name("name", &"é".repeat(257)).is_err());
        assert!(check_name("name", "tab\there").is_err());
    }
}
